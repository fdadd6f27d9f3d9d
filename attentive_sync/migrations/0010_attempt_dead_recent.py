from django.contrib.postgres.operations import AddIndexConcurrently
from django.db import migrations, models


class Migration(migrations.Migration):
    # Built without locking writes: every delivery try inserts an attempt.
    atomic = False

    dependencies = [
        ("attentive_sync", "0009_delivery_failing_recent"),
    ]

    operations = [
        AddIndexConcurrently(
            model_name="deliveryattempt",
            index=models.Index(
                fields=["started_at"],
                condition=models.Q(("outcome__in", ["dead", "expired"])),
                name="attempt_dead_recent",
            ),
        ),
    ]

from django.contrib.postgres.operations import AddIndexConcurrently
from django.db import migrations, models


class Migration(migrations.Migration):
    # Built without locking writes: the deliveries table is the busiest and may be large.
    atomic = False

    dependencies = [
        ("attentive_sync", "0010_attempt_dead_recent"),
    ]

    operations = [
        AddIndexConcurrently(
            model_name="delivery",
            index=models.Index(
                fields=["status", "created_at"],
                condition=models.Q(("status__in", ["pending", "failed"])),
                name="delivery_waiting",
            ),
        ),
    ]

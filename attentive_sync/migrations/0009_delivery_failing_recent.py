from django.contrib.postgres.operations import AddIndexConcurrently
from django.db import migrations, models


class Migration(migrations.Migration):
    # Built without locking writes: the deliveries table is the busiest and may be large.
    atomic = False

    dependencies = [
        ("attentive_sync", "0008_text_send"),
    ]

    operations = [
        AddIndexConcurrently(
            model_name="delivery",
            index=models.Index(
                models.OrderBy(models.F("created_at"), descending=True),
                condition=models.Q(("status__in", ["failed", "dead", "expired"])),
                name="delivery_failing_recent",
            ),
        ),
    ]

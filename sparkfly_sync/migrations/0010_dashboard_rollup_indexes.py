import django.db.models.functions.comparison
from django.contrib.postgres.operations import AddIndexConcurrently
from django.db import migrations, models


class Migration(migrations.Migration):
    # Built without locking writes: issuances and notifications go on while they build.
    atomic = False

    dependencies = [
        ("sparkfly_sync", "0009_portal_page_indexes"),
    ]

    operations = [
        AddIndexConcurrently(
            model_name="issuancerequest",
            index=models.Index(
                fields=["finished_at"], name="issuance_issued_finished", condition=models.Q(("state", "issued"))
            ),
        ),
        AddIndexConcurrently(
            model_name="notification",
            index=models.Index(
                django.db.models.functions.comparison.Coalesce("occurred_at", "received_at"),
                condition=models.Q(("event_name", "loyalty.enrollment.points.redeemed")),
                name="notification_points_occurred",
            ),
        ),
    ]

from django.contrib.postgres.operations import AddIndexConcurrently, RemoveIndexConcurrently
from django.db import migrations, models


class Migration(migrations.Migration):
    # Indexes built and dropped without locking writes: every delivery try writes both tables.
    # The column is nullable with no default: adding it rewrites nothing. Deliveries given up
    # before this migration have none, so the alert does not count them: for at most
    # ALERT_DEAD_LETTER_MINUTES after the release.
    atomic = False

    dependencies = [
        ("attentive_sync", "0013_api_url_allowlist"),
    ]

    operations = [
        migrations.AddField(
            model_name="delivery",
            name="dead_letter_at",
            field=models.DateTimeField(blank=True, null=True, verbose_name="dead letter since"),
        ),
        AddIndexConcurrently(
            model_name="delivery",
            index=models.Index(
                condition=models.Q(("dead_letter_at__isnull", False)), fields=["dead_letter_at"], name="delivery_dead_letter"
            ),
        ),
        # The alert counted dead letters by their last try; expired ones never tried were missed.
        RemoveIndexConcurrently(model_name="deliveryattempt", name="attempt_dead_recent"),
    ]

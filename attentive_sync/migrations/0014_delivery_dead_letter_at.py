from django.db import migrations, models


class Migration(migrations.Migration):
    # The column alone, in one transaction: its indexes are 0015's, built concurrently (which
    # cannot run in a transaction). Kept apart so a failed index build leaves 0014 applied and
    # re-running migrate resumes at 0015 instead of failing on "column already exists".
    # The column is nullable with no default: adding it rewrites nothing, but it takes an ACCESS
    # EXCLUSIVE lock, which queues behind any long transaction on the table, and every delivery
    # write queues behind it. lock_timeout makes a blocked release fail in 5 s (nothing applied;
    # run migrate again) instead of stalling deliveries. Deliveries given up before this
    # migration have no dead_letter_at, so the alert does not count them: for at most
    # ALERT_DEAD_LETTER_MINUTES after the release.
    dependencies = [
        ("attentive_sync", "0013_api_url_allowlist"),
    ]

    operations = [
        migrations.RunSQL("SET LOCAL lock_timeout = '5s'", migrations.RunSQL.noop),
        migrations.AddField(
            model_name="delivery",
            name="dead_letter_at",
            field=models.DateTimeField(blank=True, null=True, verbose_name="dead letter since"),
        ),
    ]

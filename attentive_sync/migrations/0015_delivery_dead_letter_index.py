from django.contrib.postgres.operations import AddIndexConcurrently, RemoveIndexConcurrently
from django.db import migrations, models


class Migration(migrations.Migration):
    # Built and dropped without locking writes: every delivery try writes both tables. A build
    # that fails leaves an INVALID index named delivery_dead_letter: drop it
    # (DROP INDEX CONCURRENTLY delivery_dead_letter) before running migrate again.
    atomic = False

    dependencies = [
        ("attentive_sync", "0014_delivery_dead_letter_at"),
    ]

    operations = [
        AddIndexConcurrently(
            model_name="delivery",
            index=models.Index(
                condition=models.Q(("dead_letter_at__isnull", False)), fields=["dead_letter_at"], name="delivery_dead_letter"
            ),
        ),
        # The alert counted dead letters by their last try; expired ones never tried were missed.
        RemoveIndexConcurrently(model_name="deliveryattempt", name="attempt_dead_recent"),
    ]

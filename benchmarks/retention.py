"""Benchmark: retention's batches at a million deliveries (``make bench``).

Seeds a scratch database with ``manage.py seed_demo`` (100,000 members, 1,000,000 redemptions
and as many deliveries spread over a year, their attempts and the dashboard's rollups), then
prunes the deliveries past RETENTION_DAYS (30) and RETENTION_FAILED_DAYS (90) in batches of
5,000 while another thread keeps inserting a delivery and its attempt, one short transaction
each, as the workers do. Prints the time per batch (p50 / p95 / max: the longest any writer
could wait on a batch's rows), the total, and the inserts' own latency meanwhile (goal: no
insert waits longer than the longest batch), then checks the dashboard's delivery rollups are
the same after the prune and a nightly rebuild.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
import uuid
from pathlib import Path

from support import percentile, print_table, scratch_database, stop_on_signals

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
os.environ.setdefault("SECRET_KEY", "benchmark-only")
os.environ["LOG_LEVEL"] = "WARNING"
os.environ["DEBUG"] = "false"
for name in ("SPARKFLY_API_URL", "SPARKFLY_IDENTITY", "SPARKFLY_KEY"):
    os.environ[name] = ""  # never a real account


def insert_meanwhile(stop: threading.Event, latencies: list[float]) -> None:
    """Insert a delivery and its attempt per transaction until ``stop``; record each one's seconds."""
    from django.db import connection, transaction
    from django.utils import timezone

    from attentive_sync.models import Delivery, DeliveryAttempt

    try:
        while not stop.is_set():
            started = time.perf_counter()
            with transaction.atomic():
                now = timezone.now()
                delivery = Delivery.objects.create(
                    external_event_id=str(uuid.uuid4()), event_type="bench", payload={}, occurred_at=now,
                    status=Delivery.Status.DELIVERED, delivered_at=now, attempts=1,
                )
                DeliveryAttempt.objects.create(
                    delivery=delivery, started_at=now, duration_ms=1.0, status_code=200, outcome="delivered"
                )
            latencies.append(time.perf_counter() - started)
    finally:
        connection.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--members", type=int, default=100_000)
    parser.add_argument("--redemptions", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=5000)
    args = parser.parse_args()

    import django

    django.setup()
    from django.core.management import call_command
    from django.db.models import Sum

    from attentive_sync.models import Delivery, DeliveryAttempt
    from attentive_sync.retention import deliveries_prune
    from portal.models import DailyDeliveries
    from portal.rollups import rollups_refresh

    stop_on_signals()
    with scratch_database():
        started = time.perf_counter()
        call_command(
            "seed_demo", "--members", str(args.members), "--redemptions", str(args.redemptions), "--yes",
            stdout=sys.stderr,
        )
        seeding = time.perf_counter() - started
        deliveries_before, attempts_before = Delivery.objects.count(), DeliveryAttempt.objects.count()

        def rollups() -> list[tuple]:
            return list(
                DailyDeliveries.objects.values_list("day", "status", "delay_bucket")
                .annotate(n=Sum("deliveries")).order_by("day", "status", "delay_bucket")
            )

        rollups_refresh()
        counted = rollups()

        stop, latencies = threading.Event(), []
        inserter = threading.Thread(target=insert_meanwhile, args=(stop, latencies))
        inserter.start()
        try:
            time.sleep(1)  # the inserter's steady state, before the prune starts
            pruning_started = time.perf_counter()
            pruned = deliveries_prune(batch=args.batch)
            total = time.perf_counter() - pruning_started
            time.sleep(1)
        finally:
            stop.set()
            inserter.join()

        deliveries_after, attempts_after = Delivery.objects.count(), DeliveryAttempt.objects.count()
        inserted = len(latencies)
        rollups_refresh(everything=True)
        recounted = [row for row in rollups() if row[1] != "bench"]
        # The inserter's deliveries are counted on today; leave today out of the comparison.
        today = max(row[0] for row in counted)
        unchanged = [r for r in recounted if r[0] < today] == [r for r in counted if r[0] < today]

    batches = [s for step in pruned for s in step.batch_seconds]
    rows = [
        ("seeding (seed_demo)", f"{seeding:,.0f} s", f"{args.redemptions:,} redemptions and deliveries"),
        ("deliveries / attempts before", f"{deliveries_before:,} / {attempts_before:,}", "reference"),
        *((f"pruned: {step.what}", f"{step.rows:,} in {step.batches} batches", "reference") for step in pruned),
        ("deliveries / attempts after", f"{deliveries_after:,} / {attempts_after:,}",
         f"incl. {inserted:,} inserted meanwhile"),
        ("pruning, total", f"{total:,.1f} s", "reference"),
        (f"batch of {args.batch:,} p50 / p95 / max",
         f"{percentile(batches, .5) * 1000:,.0f} / {percentile(batches, .95) * 1000:,.0f} / {max(batches) * 1000:,.0f} ms",
         "short transactions"),
        ("concurrent insert p50 / p99 / max",
         f"{percentile(latencies, .5) * 1000:,.1f} / {percentile(latencies, .99) * 1000:,.1f} / {max(latencies) * 1000:,.0f} ms",
         f"max <= longest batch ({max(batches) * 1000:,.0f} ms) "
         + ("MET" if max(latencies) <= max(batches) else "MISSED")),
        ("delivery rollups after prune + nightly rebuild", "unchanged" if unchanged else "CHANGED", "unchanged"),
    ]
    print_table("Retention: pruning a year of deliveries (RETENTION_DAYS=30, RETENTION_FAILED_DAYS=90)", rows)
    if not unchanged or max(latencies) > max(batches):
        sys.exit(1)


if __name__ == "__main__":
    main()

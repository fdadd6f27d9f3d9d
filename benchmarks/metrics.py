"""How fast /metrics and the minute's alert check answer at a production-sized database.

Seeds a scratch database with ``manage.py seed_demo`` (100,000 members, 1,000,000 redemptions
and their deliveries), adds 1,000,000 webhook request records (seed_demo makes none; a month of
a million callbacks is what the retention window keeps) and 10,000 waiting jobs, then times
/metrics through Django's test client (every middleware, the collector's queries, the text
format; no network) and ``alerts_check``, warm, 100 times each.

    python benchmarks/metrics.py [--members N] [--redemptions N] [--requests N] [--scrapes N]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
os.environ.setdefault("SECRET_KEY", "benchmark-only")
os.environ["LOG_LEVEL"] = "WARNING"
os.environ["DEBUG"] = "false"  # DEBUG keeps every query in memory: not what production runs
os.environ["SECURE_SSL_REDIRECT"] = "false"  # the test client speaks plain http

from support import percentile, print_table, scratch_database, stop_on_signals  # noqa: E402

GOAL_P95_MS = 250  # a Prometheus scrape timeout is 10 s by default; an operator's page waits on it too
WARMUP = 5

# A month of requests, evenly spread (retention keeps 30 days).
_INBOUND_REQUESTS = """
INSERT INTO sparkfly_sync_inboundrequest
    (kind, endpoint_uuid, received_at, method, headers, query, body, body_size, status_code, outcome, errors)
SELECT CASE WHEN n %% 10 = 0 THEN 'notification' ELSE 'conversion' END, '', now() - (n %% 2592000) * interval '1 second',
       'GET', '{}', '', '', 0,
       CASE WHEN n %% 100 = 0 THEN 401 WHEN n %% 100 = 1 THEN 400 WHEN n %% 20 = 2 THEN 200 ELSE 202 END,
       CASE WHEN n %% 100 IN (0, 1) THEN 'rejected' WHEN n %% 20 = 2 THEN 'duplicate' ELSE 'accepted' END, '{}'
FROM generate_series(1, %s) AS n
"""
# What /metrics ran before DailyCallbacks, for reference.
_DIRECT_COUNT = "SELECT kind, outcome, status_code, count(*) FROM sparkfly_sync_inboundrequest GROUP BY 1, 2, 3"
_JOBS = """
INSERT INTO procrastinate_jobs (queue_name, task_name, args, status, scheduled_at)
SELECT 'deliveries', 'attentive_sync.deliver_event', jsonb_build_object('delivery_id', n), 'todo',
       CASE WHEN n %% 2 = 0 THEN now() + interval '5 minutes' END
FROM generate_series(1, %s) AS n
"""


def timed(call, count: int) -> list[float]:
    for _ in range(WARMUP):
        call()
    times = []
    for _ in range(count):
        started = time.perf_counter()
        call()
        times.append((time.perf_counter() - started) * 1000)
    return times


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--members", type=int, default=100_000)
    parser.add_argument("--redemptions", type=int, default=1_000_000)
    parser.add_argument("--requests", type=int, default=1_000_000, help="webhook request records")
    parser.add_argument("--jobs", type=int, default=10_000, help="waiting jobs")
    parser.add_argument("--scrapes", type=int, default=100)
    args = parser.parse_args()

    import django

    django.setup()
    from django.conf import settings
    from django.core.management import call_command
    from django.db import connection
    from django.test import Client

    from attentive_sync.models import Delivery
    from portal.alerts import alerts_check
    from portal.callback_counts import callback_counts_refresh
    from portal.metrics import _STATEMENTS, _rows

    settings.ALLOWED_HOSTS = [*settings.ALLOWED_HOSTS, "testserver"]  # the test Client's host name
    stop_on_signals()
    with scratch_database():
        started = time.perf_counter()
        call_command("seed_demo", "--members", str(args.members), "--redemptions", str(args.redemptions), "--yes",
                     stdout=sys.stderr)
        with connection.cursor() as cursor:
            cursor.execute(_INBOUND_REQUESTS, [args.requests])
            cursor.execute(_JOBS, [args.jobs])
            cursor.execute("VACUUM ANALYZE")
        seeding = time.perf_counter() - started
        started = time.perf_counter()
        callback_counts_refresh()  # the first count: every kept request
        first_count = time.perf_counter() - started
        deliveries = Delivery.objects.count()
        waiting = Delivery.objects.filter(status__in=["pending", "failed"]).count()

        client = Client()

        def scrape():
            response = client.get("/metrics")
            assert response.status_code == 200, response.content[:500]
            return response

        size = len(scrape().content)
        scrapes = timed(scrape, args.scrapes)
        checks = timed(alerts_check, args.scrapes)
        counts = timed(callback_counts_refresh, 20)
        with connection.cursor() as cursor:
            direct = timed(lambda: cursor.execute(_DIRECT_COUNT) or cursor.fetchall(), 20)
        with connection.cursor() as cursor:
            queries = {
                name: percentile(timed(lambda name=name: _rows(cursor, name, {"stalled": 60}), 20), 0.5)
                for name in _STATEMENTS
            }

    p95 = percentile(scrapes, 0.95)
    print_table(
        "/metrics and the alert check at a production-sized database",
        [
            ("seeding (seed_demo, requests, jobs)", f"{seeding:,.0f} s",
             f"{args.redemptions:,} redemptions, {deliveries:,} deliveries, {args.requests:,} webhook requests, "
             f"{args.jobs:,} jobs; {waiting:,} deliveries not through"),
            ("GET /metrics p50 / p95", f"{percentile(scrapes, 0.5):.0f} / {p95:.0f} ms",
             f"goal p95 ≤ {GOAL_P95_MS} ms; {size:,} bytes"),
            ("alerts_check p50 / p95", f"{percentile(checks, 0.5):.0f} / {percentile(checks, 0.95):.0f} ms",
             "once a minute, one worker"),
            ("callback count: first / each minute p50", f"{first_count * 1000:.0f} / {percentile(counts, 0.5):.0f} ms",
             "every kept request once; then today and yesterday"),
            ("  (counting the kept requests at each scrape instead)", f"{percentile(direct, 0.5):.0f} ms", ""),
            *((f"  query {name} p50", f"{ms:.1f} ms", "") for name, ms in queries.items()),
        ],
    )
    return 0 if p95 <= GOAL_P95_MS else 1


if __name__ == "__main__":
    sys.exit(main())

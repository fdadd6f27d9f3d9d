"""Benchmark: the program-manager pages at a million members and a million redemptions (``make bench``).

Seeds a scratch database with ``manage.py seed_demo`` (1,000,000 members, 1,000,000 redemptions,
their credentials, enrollments, issuances, points redemptions and deliveries, and the
dashboard's rollups), signs in a program manager, then times each page server-side and warm:
Django's test Client in this process (URL routing, every middleware, the view, its queries and
template; no network, no browser), 20 warm-up requests, then 200 measured, each a different
member or search term where the page takes one. Prints p50/p95 per page and seeding time.

Goals (issue 6): dashboard p95 <= 300 ms, member search p95 <= 100 ms, member 360 p95 <= 150 ms;
the deliveries page is timed for reference (no goal).
A missed goal is printed as MISSED and the exit status is 1. The machine is shared: the CPU
other processes used meanwhile is printed too.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlencode

from support import CpuMeter, percentile, print_table, scratch_database, stop_on_signals

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
os.environ.setdefault("SECRET_KEY", "benchmark-only")
os.environ["LOG_LEVEL"] = "WARNING"
os.environ["DEBUG"] = "false"  # DEBUG keeps every query in memory: not what production runs
for name in ("SPARKFLY_API_URL", "SPARKFLY_IDENTITY", "SPARKFLY_KEY"):
    os.environ[name] = ""  # never a real account

GOALS_MS = {"dashboard": 300, "member search": 100, "member 360": 150, "deliveries": None}  # None: no goal set
WARMUP = 20


def measure(client, paths: Callable[[int], str], requests: int) -> list[float]:
    """Seconds per request of ``paths(i)`` for i in 0…requests-1, after WARMUP unmeasured ones."""
    timings = []
    for i in range(-WARMUP, requests):
        path = paths(i)
        started = time.perf_counter()
        response = client.get(path, secure=True)
        elapsed = time.perf_counter() - started
        if response.status_code != 200:
            raise SystemExit(f"GET {path} answered {response.status_code}, not 200: nothing to measure")
        if i >= 0:
            timings.append(elapsed)
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=1_000_000)
    parser.add_argument("--redemptions", type=int, default=1_000_000)
    parser.add_argument("--requests", type=int, default=200, help="measured requests per page")
    args = parser.parse_args()

    import django

    django.setup()
    from django.conf import settings
    from django.contrib.auth.models import User
    from django.core.management import call_command
    from django.test import Client
    from django.utils import timezone

    from portal.demo import DEMO_ID_BASE
    from portal.roles import user_assign_role
    from sparkfly_sync.models import Member

    settings.ALLOWED_HOSTS = [*settings.ALLOWED_HOSTS, "testserver"]  # the test Client's host name
    stop_on_signals()
    with scratch_database():
        started = time.perf_counter()
        call_command(
            "seed_demo", "--members", str(args.members), "--redemptions", str(args.redemptions), stdout=sys.stderr
        )
        seeding = time.perf_counter() - started

        manager = User.objects.create_user("bench-manager", "bench-manager@example.com")
        user_assign_role(user=manager, role="program-manager")
        client = Client()
        client.force_login(manager)

        randomly = random.Random(6)
        numbers = [randomly.randint(1, args.members) for _ in range(WARMUP + args.requests)]
        members = {m.sparkfly_id: m for m in Member.objects.filter(sparkfly_id__in=[DEMO_ID_BASE + n for n in numbers])}

        def member(i: int) -> Member:
            return members[DEMO_ID_BASE + numbers[i + WARMUP]]

        def with_contact(i: int, field: str) -> str:
            # A member the seed gave no phone or email (one in 50 / 70) is searched by the next one's.
            while not getattr(member(i), field):
                i = (i + 1) % args.requests
            return getattr(member(i), field)

        def search(term: str) -> str:
            return "/members/?" + urlencode({"q": term})

        today = timezone.localdate()

        def dashboard(days: int) -> Callable[[int], str]:
            return lambda i: f"/?from={today - timedelta(days=days - 1)}&to={today}"

        pages = [
            ("dashboard", "dashboard, 30 days", dashboard(30)),
            ("dashboard", "dashboard, 365 days", dashboard(365)),
            ("member search", "search: identifier", lambda i: search(member(i).identifier)),
            ("member search", "search: email", lambda i: search(with_contact(i, "email"))),
            ("member search", "search: phone", lambda i: search(with_contact(i, "phone"))),
            # Identifiers are demo-<n>: "demo-1234" also starts demo-12340…demo-12349 and so on.
            ("member search", "search: identifier prefix", lambda i: search(member(i).identifier[:-2])),
            ("member 360", "member 360", lambda i: f"/members/{member(i).sparkfly_id}/"),
            ("deliveries", "deliveries: failures first", lambda i: "/deliveries/"),
            ("deliveries", "deliveries: every status, page 5", lambda i: "/deliveries/?status=all&page=5"),
        ]
        meter = CpuMeter()
        results = [(goal, name, measure(client, paths, args.requests)) for goal, name, paths in pages]
        busy, others = meter.stop()

    missed = False
    rows = [("seeding (seed_demo, rollups included)", f"{seeding:,.0f} s", f"{args.members:,} members, "
             f"{args.redemptions:,} redemptions")]
    for goal, name, timings in results:
        p50, p95 = percentile(timings, 0.5) * 1000, percentile(timings, 0.95) * 1000
        if GOALS_MS[goal] is None:
            verdict = "reference"
        else:
            met = p95 <= GOALS_MS[goal]
            missed |= not met
            verdict = f"p95 <= {GOALS_MS[goal]} ms {'MET' if met else 'MISSED'}"
        rows.append((f"{name} p50 / p95", f"{p50:,.0f} / {p95:,.0f} ms", verdict))
    rows.append(("CPU while measuring: machine / other processes", f"{busy:.1f} / {others:.1f} cores", "reference"))
    print_table(f"Pages, server-side and warm ({args.requests} requests each after {WARMUP} warm-up)", rows)
    sys.exit(1 if missed else 0)


if __name__ == "__main__":
    main()

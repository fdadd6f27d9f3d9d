"""Benchmark: mirror 100,000 members from the Sparkfly sandbox (``make bench``).

Runs the sandbox in its own process (so its memory is not counted), syncs members into a
scratch database with per_page 10000, then measures in the same run PostgreSQL's ``COPY`` of
the same rows into an empty table: the ceiling no sync can beat. Prints a table.

Goals (issue 2, on this 2-core machine): >= 5,000 members/s end to end, peak RSS <= 300 MB.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import requests
from psycopg.types.json import Jsonb

from support import free_port, print_table, scratch_database

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
os.environ.setdefault("SECRET_KEY", "benchmark-only")
for name in ("SPARKFLY_API_URL", "SPARKFLY_IDENTITY", "SPARKFLY_KEY"):
    os.environ[name] = ""  # never a real account

GOAL_RATE = 5000
GOAL_RSS_MB = 300


def start_sandbox(members: int) -> tuple[subprocess.Popen, str]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "manage.py"), "sparkfly_sandbox", "--port", str(port), "--members", str(members)],
        stdout=subprocess.DEVNULL,
        env={**os.environ, "DEBUG": "true", "LOG_LEVEL": "WARNING"},  # no access log in the table
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            requests.get(url + "/auth", timeout=1)
            return process, url
        except requests.ConnectionError:
            if process.poll() is not None:
                raise SystemExit("the sandbox exited before serving") from None
            time.sleep(0.2)
    process.kill()
    raise SystemExit("the sandbox did not start within 120 s")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def copy_ceiling(rows: int) -> float:
    """Rows/s of COPY-ing the mirrored member rows into an empty table (no HTTP, no parsing)."""
    from django.db import connection, transaction

    with transaction.atomic(), connection.cursor() as django_cursor:
        cursor = django_cursor.cursor
        cursor.execute("CREATE TEMP TABLE copy_ceiling (LIKE sparkfly_sync_member) ON COMMIT DROP")
        cursor.execute("SELECT * FROM sparkfly_sync_member")
        data = cursor.fetchall()
        raw_index = [d.name for d in cursor.description].index("raw")
        data = [tuple(Jsonb(v) if i == raw_index else v for i, v in enumerate(row)) for row in data]
        started = time.perf_counter()
        with cursor.copy("COPY copy_ceiling FROM STDIN") as copy:
            for row in data:
                copy.write_row(row)
        elapsed = time.perf_counter() - started
    return len(data) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=100_000)
    parser.add_argument("--per-page", type=int, default=10_000)
    args = parser.parse_args()

    import django

    django.setup()
    from sparkfly_sync.client import SparkflyClient
    from sparkfly_sync.models import Member
    from sparkfly_sync.sync import sync_resource

    sandbox, url = start_sandbox(args.members)
    try:
        with scratch_database():
            client = SparkflyClient(base_url=url, identity="sandbox", key="sandbox")
            started = time.perf_counter()
            first = sync_resource("members", client=client, per_page=args.per_page)
            first_seconds = time.perf_counter() - started
            rss = peak_rss_mb()
            assert first.status == "succeeded", first.failure
            mirrored = Member.objects.count()

            started = time.perf_counter()
            second = sync_resource("members", client=client, per_page=args.per_page)
            second_seconds = time.perf_counter() - started

            ceiling = copy_ceiling(mirrored)
    finally:
        sandbox.terminate()
        sandbox.wait(10)

    rate = mirrored / first_seconds
    rows = [
        ("members mirrored", f"{mirrored:,}", f"{args.members:,}"),
        ("first sync (all created)", f"{rate:,.0f} members/s ({first_seconds:.1f} s)", f">= {GOAL_RATE:,} members/s"),
        ("second sync (all unchanged)", f"{mirrored / second_seconds:,.0f} members/s ({second_seconds:.1f} s)", "-"),
        ("peak RSS of the syncing process", f"{rss:,.0f} MB", f"<= {GOAL_RSS_MB} MB"),
        ("ceiling: PostgreSQL COPY of the same rows", f"{ceiling:,.0f} rows/s", "reference"),
        ("sync / COPY ceiling", f"{rate / ceiling:.0%}", "-"),
    ]
    print_table(f"Sparkfly member sync: {args.members:,} members, per_page {args.per_page:,}, {os.cpu_count()} cores", rows)
    print(
        f"\nsecond run: {second.created} created, {second.updated} updated, {second.unchanged} unchanged"
    )
    ok = rate >= GOAL_RATE and rss <= GOAL_RSS_MB and second.created == second.updated == 0
    print("goals met" if ok else "GOALS NOT MET")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()

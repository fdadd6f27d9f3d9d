"""Benchmark: drain 20,000 pending deliveries into the Attentive sandbox (``make bench``).

(a) The sandbox enforces Attentive's 150 requests/s; the portal's shared limiter is set to
    the default 140/s. Prints delivered/s (goal >= 95% of 140) and the share of 429s
    (goal <= 0.1%).
(b) The sandbox is unlimited and answers in 5 ms; the limiter is opened up. Prints
    delivered/s: the headroom of the pipeline (goal >= 500/s on this 2-core machine).
In the same run, the rate of procrastinate's own no-op jobs on the same workers is the
reference: what one job per send could reach at most (why a job sends a batch).
Workers are real `manage.py procrastinate worker` processes.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import requests

from support import free_port, print_table, scratch_database

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
os.environ.setdefault("SECRET_KEY", "benchmark-only")

GOAL_SHARE_OF_LIMIT = 0.95
GOAL_429_SHARE = 0.001
GOAL_HEADROOM = 500
LIMITER_RATE = 140


def start_sandbox(*, rate_limit: int, latency_ms: int) -> tuple[subprocess.Popen, str]:
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable, str(ROOT / "manage.py"), "attentive_sandbox", "--port", str(port),
            "--rate-limit", str(rate_limit), "--latency-ms", str(latency_ms),
        ],
        stdout=subprocess.DEVNULL,
        env={**os.environ, "DEBUG": "true", "LOG_LEVEL": "WARNING"},
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            requests.get(url + "/_sandbox/received", timeout=1)
            return process, url
        except requests.ConnectionError:
            time.sleep(0.1)
    process.kill()
    raise SystemExit("the Attentive sandbox did not start")


def start_workers(count: int, concurrency: int, database_url: str, queue: str) -> list[subprocess.Popen]:
    env = {**os.environ, "DATABASE_URL": database_url, "DEBUG": "false", "LOG_LEVEL": "WARNING"}
    return [
        subprocess.Popen(
            [sys.executable, str(ROOT / "manage.py"), "procrastinate", "worker", "--queues", queue,
             "--concurrency", str(concurrency)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(count)
    ]


def stop(processes) -> None:
    for process in processes:
        process.terminate()
    for process in processes:
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()


def queue_deliveries(count: int, run: str) -> None:
    """`count` deliveries recorded and queued exactly as the portal does it (forward())."""
    from django.db import transaction
    from django.utils import timezone

    from attentive_sync.delivery import forward
    from attentive_sync.events import CustomEvent, EventUser

    now = timezone.now()
    with transaction.atomic():
        for i in range(count):
            forward(
                CustomEvent(
                    type="benchmark.event",
                    user=EventUser(client_user_id=f"member-{i}"),
                    occurred_at=now,
                    external_event_id=f"{run}-{i}",
                    properties={"n": i},
                )
            )


def wait_until_delivered(count: int, run: str, timeout: float) -> tuple[float, int]:
    """Seconds between the first and the last delivery of the run, and how many got through."""
    from django.db.models import Max, Min

    from attentive_sync.models import Delivery

    deliveries = Delivery.objects.filter(external_event_id__startswith=f"{run}-")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if deliveries.exclude(status="delivered").filter(status__in=["pending", "failed"]).count() == 0:
            break
        time.sleep(0.5)
    done = deliveries.filter(status="delivered")
    span = done.aggregate(first=Min("delivered_at"), last=Max("delivered_at"))
    seconds = (span["last"] - span["first"]).total_seconds() if span["first"] else float("nan")
    return seconds, done.count()


def noop_rate(count: int, workers: int, concurrency: int, database_url: str) -> float:
    from django.db.models import Max, Min
    from procrastinate.contrib.django.models import ProcrastinateEvent, ProcrastinateJob

    from portal.tasks import noop

    noop.batch_defer(*[{} for _ in range(count)])
    processes = start_workers(workers, concurrency, database_url, "benchmark")
    try:
        jobs = ProcrastinateJob.objects.filter(task_name="portal.noop")
        deadline = time.monotonic() + 300
        while jobs.exclude(status="succeeded").exists() and time.monotonic() < deadline:
            time.sleep(0.5)
    finally:
        stop(processes)
    span = ProcrastinateEvent.objects.filter(job__task_name="portal.noop", type="succeeded").aggregate(
        first=Min("at"), last=Max("at")
    )
    return (count - 1) / (span["last"] - span["first"]).total_seconds()


def configure(url: str, rate: int) -> None:
    from attentive_sync.models import AttentiveSettings

    settings = AttentiveSettings.load()
    settings.api_key, settings.api_url, settings.enabled, settings.rate_limit_per_second = "sandbox", url, True, rate
    settings.save()


def received_429s(url: str) -> tuple[int, int, int]:
    """Events the sandbox accepted, 429s it answered to them, and events it got twice."""
    body = requests.get(url + "/_sandbox/received", timeout=60).json()
    return len(body["events"]), body["rate_limited"].get("POST /v1/events/custom", 0), len(body["duplicate_external_event_ids"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deliveries", type=int, default=20_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()

    import django

    django.setup()
    from django.db import connection

    from portal.dburl import database_url as url_of

    results = {}
    with scratch_database():
        database_url = url_of(connection.settings_dict, application_name="benchmark-worker")
        for name, sandbox_limit, latency, limiter in (
            ("limited", 150, 0, LIMITER_RATE),
            ("unlimited", 0, 5, 10_000),
        ):
            sandbox, url = start_sandbox(rate_limit=sandbox_limit, latency_ms=latency)
            configure(url, limiter)
            queue_deliveries(args.deliveries, name)
            workers = start_workers(args.workers, args.concurrency, database_url, "deliveries")
            try:
                seconds, delivered = wait_until_delivered(args.deliveries, name, timeout=args.deliveries / 50 + 120)
                accepted, rate_limited, duplicates = received_429s(url)
            finally:
                stop(workers)
                stop([sandbox])
            results[name] = (delivered, seconds, accepted, rate_limited, duplicates)
        reference = noop_rate(args.deliveries, args.workers, args.concurrency, database_url)

    limited_delivered, limited_seconds, limited_accepted, limited_429, limited_twice = results["limited"]
    open_delivered, open_seconds, _, _, open_twice = results["unlimited"]
    limited_rate = (limited_delivered - 1) / limited_seconds
    open_rate = (open_delivered - 1) / open_seconds
    share_429 = limited_429 / max(1, limited_accepted + limited_429)
    rows = [
        ("(a) sandbox at 150/s, limiter at 140/s", f"{limited_rate:,.1f} delivered/s", f">= {GOAL_SHARE_OF_LIMIT * LIMITER_RATE:.0f}/s"),
        ("(a) 429 answers", f"{limited_429} of {limited_accepted + limited_429} ({share_429:.3%})", f"<= {GOAL_429_SHARE:.1%}"),
        ("(b) unlimited sandbox, 5 ms latency", f"{open_rate:,.0f} delivered/s", f">= {GOAL_HEADROOM}/s"),
        ("reference: procrastinate no-op jobs", f"{reference:,.0f} jobs/s", "one job per send would be capped here"),
        ("delivered", f"{limited_delivered:,} + {open_delivered:,}", f"{args.deliveries:,} each"),
        ("events Attentive received twice", f"{limited_twice + open_twice}", "0"),
    ]
    print_table(
        f"Attentive delivery drain: {args.deliveries:,} deliveries per run, {args.workers} workers x "
        f"concurrency {args.concurrency}, {os.cpu_count()} cores",
        rows,
    )
    ok = (
        limited_rate >= GOAL_SHARE_OF_LIMIT * LIMITER_RATE
        and share_429 <= GOAL_429_SHARE
        and open_rate >= GOAL_HEADROOM
        and limited_delivered == open_delivered == args.deliveries
        and limited_twice == open_twice == 0
    )
    print("goals met" if ok else "GOALS NOT MET")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()

"""Benchmark: receipt -> delivery latency of redemptions at 50/s (``make bench``).

The whole path runs as in production, each part in its own process: the Sparkfly sandbox,
the portal under gunicorn (the ingest benchmark's configuration), two ``manage.py
procrastinate worker`` processes on every queue (concurrency 2 each, the best measured here:
at 8 the queue grew at 50/s, at 1 the workers could not keep up), and the Attentive sandbox (Attentive's 150
requests/s limit; the portal's shared limiter at its default 140/s). The channel's conversion
callback is set at the sandbox the portal's way (``callbacks.apply_conversion_callback``), so
the sandbox calls the portal on every redemption as Sparkfly does; the mirror is synced
first, so enrichment reads it.

An open loop redeems credentials at 50/s for 60 s (``PUT /credentials/{id}/redeem``, each on
schedule whatever the previous ones take), then waits for every redemption to be delivered.
Per redemption: ``Redemption.received_at`` (the callback reached the portal) ->
``Delivery.delivered_at`` (Attentive accepted the event). Prints p50/p95/p99/max, where the
time goes (queue wait, enrichment, the delivery job), the counts at every hop, and as
references from the same run the Attentive round trip the workers measured and Sparkfly's
redeem call (which includes the portal's answer to the callback).

Goals (issue): p50 <= 150 ms, p95 <= 1 s. A missed goal is printed as MISSED, and so is a
redemption still undelivered when the wait ends (it counts as infinitely late); the exit
status stays 0. A redemption lost, given up on, or sent to Attentive twice exits 1. The
harness shares the machine (both sandboxes and the driver take ~0.3 core at 50/s), and the
CPU other processes used meanwhile is printed: at 50/s this machine has little to spare.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import requests

from support import (
    CpuMeter,
    GunicornConfig,
    close_other_sessions,
    free_port,
    percentile,
    print_table,
    scratch_database,
    start_gunicorn,
    stop_on_signals,
    stop_processes,
)

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
os.environ.setdefault("SECRET_KEY", "benchmark-only")
os.environ.setdefault("SECURE_SSL_REDIRECT", "false")  # wrk and the sandbox call plain http
os.environ["LOG_LEVEL"] = "WARNING"  # no per-page sync lines in the table (children inherit it)
for name in ("SPARKFLY_API_URL", "SPARKFLY_IDENTITY", "SPARKFLY_KEY"):
    os.environ[name] = ""  # never a real account

GOAL_P50_MS = 150
GOAL_P95_MS = 1000
SANDBOX_IDENTITY = SANDBOX_KEY = "sandbox"
WARMUP_REDEMPTIONS = 25
REDEEM_THREADS = 64


@dataclass
class Redeemed:
    """One redeem call as the driver saw it."""

    credential_id: int
    due: float  # monotonic: when the schedule wanted it sent
    sent: float = 0.0
    answered: float = 0.0
    status: int | None = None
    error: str = ""


def start_server(command: list[str], ready_path: str, env: dict[str, str], name: str) -> tuple[subprocess.Popen, str]:
    """A sandbox command (``--port`` appended) started, once it answers."""
    port = free_port()
    process = subprocess.Popen(
        command + ["--port", str(port)], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the {name} exited with status {process.returncode} before serving")
        try:
            requests.get(url + ready_path, timeout=2)
            return process, url
        except requests.ConnectionError:
            time.sleep(0.2)
    stop_processes([process])
    raise SystemExit(f"the {name} did not start within 120 s")


def prepare_sparkfly(client, count: int, threads: int = 8) -> tuple[int, list[int]]:
    """An approved offer of the first merchant, published on the first channel (no redemption
    limits), and ``count`` open credentials for it, one per member, at one of the merchant's
    stores. Returns the channel id and the credential ids."""
    from sparkfly_sync.client import CHANNEL_PATH, CREDENTIALS_PATH, OFFER_APPROVE_PATH, OFFER_CHANNELS_PATH, OFFERS_PATH, STORES_PATH
    from sparkfly_sync.sandbox import CHANNEL_ID_BASE, MEMBER_ID_BASE, MERCHANT_ID_BASE

    channel_id, merchant_id = CHANNEL_ID_BASE, MERCHANT_ID_BASE
    client.get(CHANNEL_PATH.format(channel_id=channel_id))
    offer = client.request(
        "POST", OFFERS_PATH, json_body={"offer": {"name": "Benchmark: Free Coffee", "merchant_id": merchant_id}}
    )["offer"]
    client.request("PUT", OFFER_APPROVE_PATH.format(offer_id=offer["id"]))
    client.request("POST", OFFER_CHANNELS_PATH.format(offer_id=offer["id"]), json_body={"offer": {"channel_ids": [channel_id]}})
    stores = client.get(STORES_PATH.format(merchant_id=merchant_id))["stores"]
    store_id = (stores[0].get("store") or stores[0])["id"]

    def create(member_id: int) -> int:
        body = {"credential": {"member_id": member_id, "channel_id": channel_id, "offer_ids": [offer["id"]], "store_id": store_id}}
        return client.request("POST", CREDENTIALS_PATH, json_body=body)["credential"]["id"]

    with ThreadPoolExecutor(threads) as pool:
        credential_ids = list(pool.map(create, range(MEMBER_ID_BASE, MEMBER_ID_BASE + count)))
    return channel_id, credential_ids


def start_workers(count: int, concurrency: int, env: dict[str, str]) -> list[subprocess.Popen]:
    return [
        subprocess.Popen(
            [sys.executable, str(ROOT / "manage.py"), "procrastinate", "worker", "--concurrency", str(concurrency)],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        for _ in range(count)
    ]


def wait_for_workers(count: int, processes: list[subprocess.Popen], timeout: float = 60) -> None:
    from procrastinate.contrib.django.models import ProcrastinateWorker

    deadline = time.monotonic() + timeout
    while ProcrastinateWorker.objects.count() < count:
        if any(process.poll() is not None for process in processes):
            raise SystemExit("a procrastinate worker exited at start")
        if time.monotonic() > deadline:
            raise SystemExit(f"{count} procrastinate workers did not start within {timeout:.0f} s")
        time.sleep(0.2)


class Driver:
    """Redeems credentials on a fixed schedule (an open loop: a slow answer delays nothing)."""

    def __init__(self, base_url: str, token: str) -> None:
        from sparkfly_sync.client import CREDENTIAL_REDEEM_PATH

        self.url = base_url + CREDENTIAL_REDEEM_PATH
        self.headers = {"X-Auth-Token": token, "Accept": "application/json"}
        self.local = threading.local()

    def _redeem(self, call: Redeemed) -> Redeemed:
        session = getattr(self.local, "session", None) or requests.Session()
        self.local.session = session
        call.sent = time.monotonic()
        try:
            response = session.put(self.url.format(credential_id=call.credential_id), headers=self.headers, timeout=30)
            call.status = response.status_code
        except requests.RequestException as exc:
            call.error = f"{type(exc).__name__}: {exc}"
        call.answered = time.monotonic()
        return call

    def run(self, credential_ids: list[int], rate: float) -> list[Redeemed]:
        start = time.monotonic() + 0.2
        calls = [Redeemed(credential_id, due=start + i / rate) for i, credential_id in enumerate(credential_ids)]
        with ThreadPoolExecutor(REDEEM_THREADS, thread_name_prefix="redeem") as pool:
            futures = []
            for call in calls:
                if (wait := call.due - time.monotonic()) > 0:
                    time.sleep(wait)
                futures.append(pool.submit(self._redeem, call))
            return [future.result() for future in futures]


def wait_until_delivered(credential_ids: list[int], timeout: float) -> None:
    """Until every redemption is delivered (or failed for good), or ``timeout`` passes."""
    from attentive_sync.models import Delivery
    from sparkfly_sync.models import Redemption

    expected = len(credential_ids)
    redemptions = Redemption.objects.filter(credential_id__in=credential_ids)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        recorded = redemptions.count()
        delivered = redemptions.filter(delivery__status=Delivery.Status.DELIVERED).count()
        failed = redemptions.filter(state="failed").count()
        if recorded == expected and delivered + failed == expected:
            return
        time.sleep(0.5)


def ms(seconds: float) -> str:
    return "not delivered" if seconds == float("inf") else f"{seconds * 1000:,.0f} ms"


def spread(values: list[float]) -> str:
    """p50 / p95 / p99 / max of seconds, in ms."""
    if not values:
        return "n/a"
    return " / ".join(f"{percentile(values, q) * 1000:,.0f}" for q in (0.5, 0.95, 0.99)) + f" / {max(values) * 1000:,.0f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=50, help="redemptions per second")
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--workers", type=int, default=2, help="procrastinate worker processes")
    parser.add_argument("--concurrency", type=int, default=2, help="jobs at once per worker")
    parser.add_argument("--conn-max-age", type=int, default=60, help="CONN_MAX_AGE of the web server and workers")
    parser.add_argument("--drain-timeout", type=float, default=60, help="seconds to wait for deliveries after the last redeem")
    args = parser.parse_args()
    count = int(args.rate * args.seconds)

    import django

    django.setup()
    from django.db import connection
    from django.test import override_settings

    from attentive_sync.models import AttentiveSettings, Delivery, DeliveryAttempt
    from portal.dburl import database_url as url_of
    from procrastinate.contrib.django.models import ProcrastinateEvent, ProcrastinateJob
    from sparkfly_sync.callbacks import apply_conversion_callback
    from sparkfly_sync.client import SparkflyClient
    from sparkfly_sync.models import ConversionEndpoint, InboundRequest, Redemption
    from sparkfly_sync.sync import sync_all

    stop_on_signals()
    config = GunicornConfig.for_this_machine(deployed=False)
    manage = [sys.executable, str(ROOT / "manage.py")]
    with ExitStack() as stack:
        stack.enter_context(scratch_database())
        stack.callback(close_other_sessions)  # runs before the database is dropped
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="latency-")))
        processes: list[subprocess.Popen] = []
        stack.callback(stop_processes, processes)

        sandbox_env = {**os.environ, "DEBUG": "true", "LOG_LEVEL": "WARNING"}
        sparkfly, sparkfly_url = start_server(
            manage + ["sparkfly_sandbox", "--members", str(count + WARMUP_REDEMPTIONS + 100)], "/auth", sandbox_env, "Sparkfly sandbox"
        )
        processes.append(sparkfly)
        attentive, attentive_url = start_server(manage + ["attentive_sandbox"], "/_sandbox/received", sandbox_env, "Attentive sandbox")
        processes.append(attentive)

        settings = AttentiveSettings.load()
        settings.api_key, settings.api_url, settings.enabled = "sandbox", attentive_url, True
        settings.save()
        limiter_rate = settings.rate_limit_per_second

        started = time.monotonic()
        client = SparkflyClient(base_url=sparkfly_url, identity=SANDBOX_IDENTITY, key=SANDBOX_KEY)
        channel_id, credential_ids = prepare_sparkfly(client, count + WARMUP_REDEMPTIONS)
        runs = sync_all(client=client)
        failed_runs = [f"{run.resource}: {run.failure}" for run in runs if run.status != "succeeded"]
        if failed_runs:
            raise SystemExit("the mirror sync failed: " + "; ".join(failed_runs))
        # The sync asked for every member's identity link (9/s to Attentive, a worker slot for
        # minutes): a first sync's one-off work, not the redemption path measured here.
        from attentive_sync.models import IdentityLink

        IdentityLink.objects.update(pending=False)
        setup_seconds = time.monotonic() - started

        endpoint = ConversionEndpoint.objects.create(channel_id=channel_id)
        database_url = url_of(connection.settings_dict, application_name="benchmark-latency")
        env = {
            **os.environ,
            "DATABASE_URL": database_url,
            "DEBUG": "false",
            "ALLOWED_HOSTS": "127.0.0.1",
            "LOG_LEVEL": "WARNING",
            "CONN_MAX_AGE": str(args.conn_max_age),
            "SPARKFLY_API_URL": sparkfly_url,
            "SPARKFLY_IDENTITY": SANDBOX_IDENTITY,
            "SPARKFLY_KEY": SANDBOX_KEY,
        }
        portal, portal_url = start_gunicorn(
            "portal.wsgi:application", config, env, ready_path="/healthz", log_path=workdir / "gunicorn.log"
        )
        processes.append(portal)
        # The URL Sparkfly (a sandbox on this machine, so a plain-http one is allowed) calls: this gunicorn.
        with override_settings(PORTAL_PUBLIC_URL=portal_url, SPARKFLY_API_URL=sparkfly_url):
            apply_conversion_callback(endpoint=endpoint, client=client)
        workers = start_workers(args.workers, args.concurrency, env)
        processes.extend(workers)
        wait_for_workers(args.workers, workers)

        driver = Driver(sparkfly_url, client.authenticate())
        warmup, measured = credential_ids[:WARMUP_REDEMPTIONS], credential_ids[WARMUP_REDEMPTIONS:]
        driver.run(warmup, rate=5)
        wait_until_delivered(warmup, timeout=30)

        meter = CpuMeter()
        calls = driver.run(measured, rate=args.rate)
        machine_busy, others_cpu = meter.stop()
        wait_until_delivered(measured, timeout=args.drain_timeout)

        # --- what happened, hop by hop ---
        callbacks = requests.get(sparkfly_url + "/_sandbox/callbacks", timeout=30).json()["callbacks"]
        received = requests.get(attentive_url + "/_sandbox/received", timeout=60).json()
        rows = list(
            Redemption.objects.filter(credential_id__in=measured).values(
                "id", "credential_id", "received_at", "forwarded_at", "state", "delivery_id",
                "delivery__status", "delivery__delivered_at", "delivery__external_event_id",
            )
        )
        inbound = InboundRequest.objects.filter(redemption__credential_id__in=measured)
        callbacks_received = inbound.count()
        callbacks_accepted = inbound.filter(status_code=202).count()
        jobs = {
            job["id"]: job["args"].get("redemption_id")
            for job in ProcrastinateJob.objects.filter(task_name="sparkfly_sync.forward_redemption").values("id", "args")
        }
        first_start: dict[int, object] = {}
        for event in ProcrastinateEvent.objects.filter(job_id__in=list(jobs), type="started").order_by("at").values("job_id", "at"):
            first_start.setdefault(jobs[event["job_id"]], event["at"])
        delivery_ids = [row["delivery_id"] for row in rows if row["delivery_id"]]
        send_ms = list(
            DeliveryAttempt.objects.filter(delivery_id__in=delivery_ids, outcome="delivered").values_list("duration_ms", flat=True)
        )
        attempts = DeliveryAttempt.objects.filter(delivery_id__in=delivery_ids).count()

    # --- figures ---
    redeemed = [call for call in calls if call.status == 201]
    span = max(call.sent for call in calls) - min(call.sent for call in calls)
    offered_rate = (len(calls) - 1) / span if span else float("nan")
    late = max(call.sent - call.due for call in calls)
    redeem_seconds = [call.answered - call.sent for call in redeemed]
    measured_set = set(measured)
    callbacks_made = [c for c in callbacks if _credential_of(c["url"]) in measured_set]
    callback_202 = sum(1 for c in callbacks_made if c["status"] == 202)
    external_ids = {row["delivery__external_event_id"] for row in rows if row["delivery__external_event_id"]}
    events_at_attentive = [e for e in received["events"] if e["body"].get("externalEventId") in external_ids]
    duplicates = {k: v for k, v in received["duplicate_external_event_ids"].items() if k in external_ids}
    delivered = [row for row in rows if row["delivery__status"] == Delivery.Status.DELIVERED]
    undelivered = len(rows) - len(delivered)
    # A redemption not delivered by the end of the wait counts as infinitely late.
    end_to_end = [(row["delivery__delivered_at"] - row["received_at"]).total_seconds() for row in delivered]
    end_to_end += [float("inf")] * undelivered
    queue_wait = [
        (first_start[row["id"]] - row["received_at"]).total_seconds() for row in delivered if row["id"] in first_start
    ]
    enrichment = [
        (row["forwarded_at"] - first_start[row["id"]]).total_seconds()
        for row in delivered if row["id"] in first_start and row["forwarded_at"]
    ]
    delivery_stage = [
        (row["delivery__delivered_at"] - row["forwarded_at"]).total_seconds() for row in delivered if row["forwarded_at"]
    ]
    p50, p95 = percentile(end_to_end, 0.5), percentile(end_to_end, 0.95)
    p50_met, p95_met = p50 * 1000 <= GOAL_P50_MS, p95 * 1000 <= GOAL_P95_MS
    failures = [call for call in calls if call.status != 201]

    table = [
        ("receipt -> delivery, p50", ms(p50), f"<= {GOAL_P50_MS} ms  {'MET' if p50_met else 'MISSED'}"),
        ("receipt -> delivery, p95", ms(p95), f"<= {GOAL_P95_MS:,} ms  {'MET' if p95_met else 'MISSED'}"),
        ("receipt -> delivery, p99 / max", f"{ms(percentile(end_to_end, 0.99))} / {ms(max(end_to_end, default=float('nan')))}", "-"),
        ("  of which: queue wait (receipt -> forward job start)", spread(queue_wait), "p50 / p95 / p99 / max"),
        ("  of which: enrichment (job start -> Delivery recorded)", spread(enrichment), "p50 / p95 / p99 / max"),
        ("  of which: delivery (recorded -> Attentive accepted)", spread(delivery_stage), "p50 / p95 / p99 / max"),
        ("offered load", f"{offered_rate:.1f} redemptions/s for {span:.0f} s (latest send {late * 1000:.0f} ms behind schedule)", f"{args.rate:g}/s for {args.seconds:g} s"),
        ("redeemed at Sparkfly (201)", f"{len(redeemed):,} of {len(calls):,}", f"{count:,}"),
        ("callbacks Sparkfly made / answered 202", f"{len(callbacks_made):,} / {callback_202:,}", f"{count:,}"),
        ("callbacks the portal recorded / accepted", f"{callbacks_received:,} / {callbacks_accepted:,}", f"{count:,}"),
        ("redemptions recorded", f"{len(rows):,}", f"{count:,}"),
        ("delivered (Delivery.status delivered)", f"{len(delivered):,} in {attempts:,} attempts", f"{count:,}"),
        ("not delivered within the wait", f"{undelivered:,} ({args.drain_timeout:g} s after the last redeem)", "0"),
        ("events Attentive accepted / twice", f"{len(events_at_attentive):,} / {len(duplicates)}", f"{count:,} / 0"),
        ("reference: Attentive round trip (worker-measured)", spread([m / 1000 for m in send_ms]), "p50 / p95 / p99 / max"),
        ("reference: Sparkfly redeem call (incl. the portal's ack)", spread(redeem_seconds), "p50 / p95 / p99 / max"),
    ]
    print_table(
        f"Redemption latency, receipt -> delivery: {args.rate:g}/s for {args.seconds:g} s; {config.describe()}, "
        f"CONN_MAX_AGE={args.conn_max_age}; {args.workers} procrastinate workers x concurrency {args.concurrency}; "
        f"{os.cpu_count()} cores",
        table,
    )
    print(f"\nsetup (sandbox credentials + mirror sync): {setup_seconds:.0f} s; Attentive sandbox at 150 requests/s, "
          f"the portal's limiter at {limiter_rate}/s")
    print(f"while redeeming: the machine was {machine_busy:.1f} of {os.cpu_count()} cores busy, {others_cpu:.1f} of them "
          "used by processes outside this benchmark (PostgreSQL aside)")
    if failures:
        sample = failures[0]
        print(f"{len(failures)} redeem calls did not answer 201 (first: {sample.status} {sample.error})")
    print("goals met" if p50_met and p95_met else "GOALS MISSED (see above)")
    gave_up = sum(1 for row in rows if row["state"] == "failed" or row["delivery__status"] in ("dead", "expired"))
    intact = len(rows) == count and not gave_up and len(events_at_attentive) == len(delivered) and not duplicates and not failures
    if undelivered:
        print(f"UNDELIVERED: {undelivered} redemptions were not delivered {args.drain_timeout:g} s after the last redeem")
    if not intact:
        print("CHECK FAILED: a redemption was lost, failed, or reached Attentive twice (see the counts)")
    sys.exit(0 if intact else 1)


def _credential_of(url: str) -> int | None:
    from urllib.parse import parse_qs, urlsplit

    values = parse_qs(urlsplit(url).query).get("credential_id")
    return int(values[0]) if values and values[0].isdigit() else None


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit("interrupted: the child processes are stopped and the scratch database is dropped")

"""Chaos proof: nothing lost, nothing doubled (``make bench``; a smaller run is
``tests/deploy/test_chaos.py``, and ``--scenario outage`` is ``tests/deploy/test_db_outage.py``).

Everything runs as in production, each part in its own process where production has one: a
PostgreSQL server of the run's own (``support.OwnPostgres``: it is stopped and started, so never
the shared embedded one), the portal under gunicorn (``CONN_MAX_AGE=60``, health checks on), and
``manage.py run_worker`` processes kept running by a small process manager that starts a worker
again whenever one exits (as systemd or a platform would). The Sparkfly sandbox (whose redeem
calls the channel's conversion callback, as Sparkfly does) and the Attentive sandbox are served
from this process.

Scenario ``chaos`` (issue 7, item 6): redeem N credentials at the Sparkfly sandbox, which
delivers a share of the callbacks twice (half of them as two calls at once); the Attentive
sandbox fails a share of requests (500s, 429s, timeouts); a worker is killed with SIGKILL
several times mid-run, and PostgreSQL is restarted once (a fast shutdown, a few seconds down).
Like Sparkfly, the driver sends again every callback that got no 2xx (after its Retry-After,
shortened). At the end the run checks: every accepted redemption was delivered to Attentive,
none twice (by ``externalEventId``), and the counts reconcile — redeemed at Sparkfly = callbacks
accepted (202) = Redemption rows = deliveries delivered = distinct events Attentive received —
and no callback got a 5xx other than 503, and those only while PostgreSQL was down.

Scenario ``outage`` (item 5): redemptions before, during and after a PostgreSQL outage, no other
fault: callbacks during it answer 503 with Retry-After within the connect timeout, afterwards
202 again, and the worker — never restarted — forwards those recorded before and after.

Recovery timings are shortened (``RECOVERY``) so a killed worker's work is finished within
seconds rather than minutes; production keeps the defaults (README "Failure behaviour"). Prints
the table of what was injected and what was observed; ``--json`` writes the figures too. Exits
1 when a check fails.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import requests

from support import GunicornConfig, OwnPostgres, print_table, start_gunicorn, stop_on_signals, stop_processes

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SANDBOX_IDENTITY = SANDBOX_KEY = "sandbox"
ATTENTIVE_KEY = "sk_chaos"
# Shortened recovery (production: 60 / 10 / 120 / 60 s, retries from 2 s up to 15 min).
RECOVERY = {
    "WORKER_STALLED_AFTER_SECONDS": "10",
    "ATTENTIVE_TIMEOUT_SECONDS": "2",
    "ATTENTIVE_SEND_LEASE_SECONDS": "10",
    "MAINTENANCE_INTERVAL_SECONDS": "2",
    "ATTENTIVE_RETRY_BASE_SECONDS": "0.2",
    "ATTENTIVE_RETRY_CAP_SECONDS": "2",
    "DATABASE_CONNECT_TIMEOUT": "2",
}
# Sparkfly's wait before sending a failed callback again: the portal's Retry-After, capped
# here so the run ends in minutes (Sparkfly documents no schedule).
DRIVER_RETRY_CAP_SECONDS = 1.0
RETRY_SCAN_SECONDS = 0.25
COLLECT_SECONDS = 0.05


def configure_environment(database_url: str) -> None:
    os.environ.update(
        DJANGO_SETTINGS_MODULE="portal.settings",
        DATABASE_URL=database_url,
        SECRET_KEY=os.environ.get("SECRET_KEY") or "chaos-benchmark-only",
        DEBUG="false",
        ALLOWED_HOSTS="127.0.0.1",
        SECURE_SSL_REDIRECT="false",  # the sandbox calls plain http
        CONN_MAX_AGE="60",
        LOG_LEVEL=os.environ.get("CHAOS_LOG_LEVEL") or "WARNING",
        LOG_FORMAT="plain",
        SPARKFLY_SYNC_INTERVAL_MINUTES="0",
        SPARKFLY_API_URL="", SPARKFLY_IDENTITY="", SPARKFLY_KEY="",  # never a real account
        **RECOVERY,
    )


# --- processes ------------------------------------------------------------------------------------


class ProcessManager:
    """Keeps ``count`` ``run_worker`` processes running: one that exits is started again (what
    systemd or a platform's process manager does). Counts every start and exit."""

    def __init__(self, count: int, concurrency: int, env: dict[str, str], log_dir: Path) -> None:
        self.command = [sys.executable, str(ROOT / "manage.py"), "run_worker", "--concurrency", str(concurrency)]
        self.env, self.log_dir = env, log_dir
        self.processes: list[subprocess.Popen] = []
        self.starts = 0
        self.exits: list[int] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        for slot in range(count):
            self.processes.append(self._start(slot))
        self._watcher = threading.Thread(target=self._watch, daemon=True, name="process-manager")
        self._watcher.start()

    def _start(self, slot: int) -> subprocess.Popen:
        self.starts += 1
        log = open(self.log_dir / f"worker-{slot}.log", "ab")
        return subprocess.Popen(self.command, cwd=ROOT, env=self.env, stdout=log, stderr=log)

    def _watch(self) -> None:
        while not self._stopping.wait(0.2):
            with self._lock:
                for slot, process in enumerate(self.processes):
                    if process.poll() is not None and not self._stopping.is_set():
                        self.exits.append(process.returncode)
                        self.processes[slot] = self._start(slot)

    def kill_one(self, rng: random.Random) -> int:
        with self._lock:
            process = rng.choice([p for p in self.processes if p.poll() is None])
            process.send_signal(signal.SIGKILL)
            return process.pid

    def stop(self) -> None:
        self._stopping.set()
        self._watcher.join()
        stop_processes(self.processes, timeout=20)

    def logs(self) -> str:
        return "".join(path.read_text(errors="replace") for path in sorted(self.log_dir.glob("worker-*.log")))


# --- Sparkfly's side: redeeming, and sending failed callbacks again ---------------------------------


@dataclass
class Delivered:
    """One HTTP call of one conversion callback, as Sparkfly (the sandbox, or the driver's
    retry) made it."""

    url: str
    status: int | None
    at: float  # monotonic, when it was answered
    seconds: float | None = None  # the driver's calls only
    retry_after: str | None = None
    by: str = "sandbox"
    error: str | None = None


@dataclass
class Driver:
    sparkfly: object  # SandboxServer
    token: str
    calls: list[Delivered] = field(default_factory=list)
    redeemed: list[int] = field(default_factory=list)
    redeemed_at: list[float] = field(default_factory=list)  # monotonic, when each 201 came back
    refused: list[tuple[int, int | None, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        from sparkfly_sync.client import CREDENTIAL_REDEEM_PATH

        self._redeem_url = self.sparkfly.base_url + CREDENTIAL_REDEEM_PATH
        self._lock = threading.Lock()
        self._seen = 0  # sandbox callback entries already looked at
        self._pending: dict[str, tuple[dict, float]] = {}  # url -> (entry, not before)
        self._accepted: set[str] = set()
        self._stop = threading.Event()
        self._local = threading.local()

    # Redeeming: an open loop at ``rate`` per second.
    def redeem(self, credential_ids: list[int], rate: float, threads: int = 32) -> None:
        start = time.monotonic() + 0.1

        def one(index: int, credential_id: int) -> None:
            session = getattr(self._local, "session", None) or requests.Session()
            self._local.session = session
            try:
                answer = session.put(
                    self._redeem_url.format(credential_id=credential_id),
                    headers={"X-Auth-Token": self.token, "Accept": "application/json"}, timeout=60,
                )
                status, error = answer.status_code, "" if answer.status_code == 201 else answer.text[:200]
            except requests.RequestException as exc:
                status, error = None, f"{type(exc).__name__}: {exc}"
            with self._lock:
                if status == 201:
                    self.redeemed.append(credential_id)
                    self.redeemed_at.append(time.monotonic())
                else:
                    self.refused.append((credential_id, status, error))

        with ThreadPoolExecutor(threads, thread_name_prefix="redeem") as pool:
            for index, credential_id in enumerate(credential_ids):
                if (wait := start + index / rate - time.monotonic()) > 0:
                    time.sleep(wait)
                pool.submit(one, index, credential_id)

    # Sending again what got no 2xx, as Sparkfly would.
    def start_retrying(self) -> None:
        # Collecting apart from resending, so each call's time is when it was answered (give or
        # take COLLECT_SECONDS), however long a round of resends takes.
        threading.Thread(target=self._collect_loop, daemon=True, name="sparkfly-callbacks").start()
        threading.Thread(target=self._retry_loop, daemon=True, name="sparkfly-retries").start()

    def _collect_loop(self) -> None:
        while not self._stop.wait(COLLECT_SECONDS):
            self._collect()

    def _retry_loop(self) -> None:
        session = requests.Session()
        while not self._stop.wait(RETRY_SCAN_SECONDS):
            now = time.monotonic()
            with self._lock:
                due = [(url, entry) for url, (entry, not_before) in self._pending.items() if not_before <= now]
            for url, entry in due:
                self._send_again(session, url, entry)

    def _collect(self) -> None:
        with self._lock:
            entries = self.sparkfly.sandbox.callbacks
            new, self._seen = entries[self._seen:len(entries)], len(entries)
            now = time.monotonic()
            for entry in new:
                self.calls.append(Delivered(entry["url"], entry["status"], now, error=entry.get("error")))
                if entry["status"] in (200, 202):
                    self._accepted.add(entry["url"])
                    self._pending.pop(entry["url"], None)
                elif entry["url"] not in self._accepted:
                    self._pending.setdefault(entry["url"], (entry, now + 0.5))

    def _send_again(self, session: requests.Session, url: str, entry: dict) -> None:
        started = time.monotonic()
        retry_after = None
        error = None
        try:
            body = (entry.get("body") or "").encode() or None
            answer = session.request(entry["method"], url, data=body, timeout=30)
            status, retry_after = answer.status_code, answer.headers.get("Retry-After")
        except requests.RequestException as exc:
            status, error = None, f"{type(exc).__name__}: {exc}"
        answered = time.monotonic()
        wait = min(float(retry_after), DRIVER_RETRY_CAP_SECONDS) if retry_after and retry_after.isdigit() else 0.5
        with self._lock:
            self.calls.append(Delivered(url, status, answered, answered - started, retry_after, by="driver", error=error))
            if status in (200, 202):
                self._accepted.add(url)
                self._pending.pop(url, None)
            elif url not in self._accepted:
                self._pending[url] = (entry, answered + wait)

    def settled(self) -> bool:
        self._collect()
        with self._lock:
            return not self._pending

    def stop(self) -> None:
        self._stop.set()


# --- setup ------------------------------------------------------------------------------------------


def prepare(sparkfly_url: str, attentive_url: str, portal_url: str, count: int) -> tuple[list[int], int]:
    """The Attentive settings, an approved offer on the first channel with ``count`` open
    credentials, the mirror synced, and the channel's conversion callback set to the portal
    (the portal's way: ``apply_conversion_callback``). Returns the credential ids and the
    channel id."""
    from django.test import override_settings

    from attentive_sync.models import AttentiveSettings, IdentityLink
    from latency import prepare_sparkfly
    from sparkfly_sync.callbacks import apply_conversion_callback
    from sparkfly_sync.client import SparkflyClient
    from sparkfly_sync.models import ConversionEndpoint
    from sparkfly_sync.sync import sync_all

    settings = AttentiveSettings.load()
    settings.api_key, settings.api_url, settings.enabled = ATTENTIVE_KEY, attentive_url, True
    settings.save()
    client = SparkflyClient(base_url=sparkfly_url, identity=SANDBOX_IDENTITY, key=SANDBOX_KEY)
    channel_id, credential_ids = prepare_sparkfly(client, count)
    failed = [f"{run.resource}: {run.failure}" for run in sync_all(client=client) if run.status != "succeeded"]
    if failed:
        raise SystemExit("the mirror sync failed: " + "; ".join(failed))
    IdentityLink.objects.update(pending=False)  # a first sync's identity links: not this run's subject
    endpoint = ConversionEndpoint.objects.create(channel_id=channel_id)
    with override_settings(PORTAL_PUBLIC_URL=portal_url, SPARKFLY_API_URL=sparkfly_url):
        apply_conversion_callback(endpoint=endpoint, client=client)
    return credential_ids, channel_id


def wait_until(condition, timeout: float, step: float = 0.5) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(step)
    return condition()


def all_delivered(count: int) -> bool:
    """Whether ``count`` redemptions are recorded, each delivered, and no forwarding or
    delivery job is left to run (a job still running could yet send something twice)."""
    from django.db import DatabaseError, connection

    from attentive_sync.models import Delivery
    from sparkfly_sync.models import Redemption

    try:
        recorded = Redemption.objects.count()
        delivered = Redemption.objects.filter(delivery__status=Delivery.Status.DELIVERED).count()
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FROM procrastinate_jobs WHERE status IN ('todo', 'doing') "
                "AND task_name IN ('sparkfly_sync.forward_redemption', 'attentive_sync.deliver_event')"
            )
            jobs = cursor.fetchone()[0]
    except DatabaseError:  # the database restarting under the harness too
        from django.db import connections

        connections.close_all()
        return False
    return recorded >= count and delivered >= recorded and jobs == 0


def _keep_logs(workdir: Path, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for log in workdir.glob("*.log"):
        (folder / log.name).write_bytes(log.read_bytes())


def jobs_left() -> list:
    """Forwarding and delivery jobs not finished (what kept a run from draining)."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT j.id, j.task_name, j.status, j.attempts, j.scheduled_at, j.worker_id, j.lock, w.last_heartbeat "
            "FROM procrastinate_jobs j LEFT JOIN procrastinate_workers w ON w.id = j.worker_id "
            "WHERE j.status IN ('todo', 'doing') "
            "AND j.task_name IN ('sparkfly_sync.forward_redemption', 'attentive_sync.deliver_event') ORDER BY j.id LIMIT 20"
        )
        return [list(map(str, row)) for row in cursor.fetchall()]


# --- the run ----------------------------------------------------------------------------------------


def run(args) -> dict:
    import django

    stop_on_signals()
    rng = random.Random(args.seed)
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="chaos-")))
        if args.logs:
            stack.callback(_keep_logs, workdir, args.logs)  # after every process has stopped
        postgres = OwnPostgres(workdir)
        stack.callback(postgres.close)
        configure_environment(postgres.url(application_name="chaos-harness"))
        django.setup()
        from django.core.management import call_command
        from django.db import connections

        from attentive_sync.sandbox import AttentiveSandbox
        from attentive_sync.sandbox import serve_in_thread as serve_attentive
        from sparkfly_sync.sandbox import SparkflySandbox
        from sparkfly_sync.sandbox import serve_in_thread as serve_sparkfly

        started = time.monotonic()
        call_command("migrate", verbosity=0)
        chaos = args.scenario == "chaos"
        sparkfly = serve_sparkfly(SparkflySandbox(
            members=args.callbacks + 50, offers=2, channels=1, merchants=1, stores_per_merchant=1, seed=args.seed,
            duplicate_callbacks=args.duplicates if chaos else 0.0,
        ))
        stack.callback(sparkfly.shutdown)
        attentive = serve_attentive(AttentiveSandbox(
            api_key=ATTENTIVE_KEY, rate_limit=150, seed=args.seed,
            fail_rate=args.attentive_fail_rate if chaos else 0.0, fail_with=("500", "429", "timeout"),
            timeout_seconds=float(RECOVERY["ATTENTIVE_TIMEOUT_SECONDS"]) + 0.5,
        ))
        stack.callback(attentive.shutdown)

        env = {**os.environ, "DATABASE_URL": postgres.url(application_name="chaos-portal"),
               "SPARKFLY_API_URL": sparkfly.base_url, "SPARKFLY_IDENTITY": SANDBOX_IDENTITY, "SPARKFLY_KEY": SANDBOX_KEY}
        processes: list[subprocess.Popen] = []
        stack.callback(stop_processes, processes)
        portal, portal_url = start_gunicorn(
            "portal.wsgi:application", GunicornConfig(workers=args.web_workers, deployed=True), env,
            ready_path="/healthz", log_path=workdir / "gunicorn.log",
        )
        processes.append(portal)
        credential_ids, _ = prepare(sparkfly.base_url, attentive.base_url, portal_url, args.callbacks)
        workers = ProcessManager(args.workers, args.concurrency, env, workdir)
        stack.callback(workers.stop)
        setup_seconds = time.monotonic() - started

        from sparkfly_sync.client import SparkflyClient

        token = SparkflyClient(base_url=sparkfly.base_url, identity=SANDBOX_IDENTITY, key=SANDBOX_KEY).authenticate()
        driver = Driver(sparkfly, token)
        driver.start_retrying()
        connections.close_all()  # the harness holds no session across the restart

        # The faults, at fixed shares of the redeeming phase.
        redeem_seconds = args.callbacks / args.rate
        outages: list[tuple[float, float]] = []
        kills: list[tuple[float, int]] = []
        events: list[tuple[float, str]] = []
        if chaos:
            for index in range(args.sigkills):
                events.append(((index + 1) / (args.sigkills + 1) * 0.9, "sigkill"))
            for index in range(args.pg_restarts):
                events.append(((index + 1) / (args.pg_restarts + 1) * 0.6, "restart"))
        else:
            events.append((0.2, "restart"))

        injector_errors: list[str] = []
        shutdowns: list[str] = []

        def inject() -> None:
            try:
                inject_all()
            except Exception as exc:  # reported; PostgreSQL is started again whatever happened
                injector_errors.append(f"{type(exc).__name__}: {exc}")
                if postgres.running():
                    postgres.close()
                postgres.start()

        def inject_all() -> None:
            begin = time.monotonic()
            for share, kind in sorted(events):
                if (wait := begin + share * redeem_seconds - time.monotonic()) > 0:
                    time.sleep(wait)
                if kind == "sigkill":
                    kills.append((time.monotonic(), workers.kill_one(rng)))
                else:
                    down = time.monotonic()
                    shutdowns.append(postgres.stop())
                    time.sleep(max(0.0, down + args.outage_seconds - time.monotonic()))
                    postgres.start()
                    outages.append((down, time.monotonic()))

        injector = threading.Thread(target=inject, name="faults")
        injector.start()
        driver.redeem(credential_ids, rate=args.rate)
        injector.join()
        redeemed_by = time.monotonic()
        settled = wait_until(driver.settled, timeout=60)
        drained = wait_until(lambda: all_delivered(len(driver.redeemed)), timeout=args.drain_timeout)
        drain_seconds = time.monotonic() - redeemed_by
        driver.stop()
        worker_starts, worker_exits, worker_log = workers.starts, list(workers.exits), workers.logs()
        portal_alive = portal.poll() is None
        report = reconcile(driver, attentive.sandbox, sparkfly.sandbox, outages, kills)
        report["jobs_left"] = jobs_left()
        report["injector_errors"] = injector_errors
        report["shutdowns"] = shutdowns
        workers.stop()
        connections.close_all()

    report.update(
        scenario=args.scenario, setup_seconds=round(setup_seconds, 1), drain_seconds=round(drain_seconds, 1),
        settled=settled, drained=drained, worker_starts=worker_starts, worker_exits=worker_exits,
        workers=args.workers, portal_alive=portal_alive,
        worker_lost_database=worker_log.count("the worker lost the database"),
        worker_tracebacks=worker_log.count("Traceback"),
        recovery=RECOVERY,
    )
    planned = (args.sigkills, args.pg_restarts) if args.scenario == "chaos" else (0, 1)
    report["checks"]["every fault injected as planned"] = (
        not report["injector_errors"] and (report["sigkills"], report["pg_restarts"]) == planned
    )
    return report


def reconcile(driver: Driver, attentive, sparkfly, outages, kills) -> dict:
    """The figures and the checks, from the sandboxes and the portal's records."""
    from attentive_sync.models import Delivery, DeliveryAttempt
    from sparkfly_sync.models import InboundRequest, Redemption

    driver._collect()
    calls = driver.calls
    ours = {int(parse_qs(urlsplit(call.url).query).get("credential_id", ["0"])[0]) for call in calls}
    statuses = Counter(str(call.status) for call in calls)

    def during_outage(call: Delivered) -> bool:
        # A call answered while PostgreSQL was down (or a moment after: a request begun then).
        return any(down <= call.at <= up + 2.0 for down, up in outages)

    started = min((c.at for c in calls), default=0.0)
    five_hundreds = [c for c in calls if c.status is not None and c.status >= 500]
    bad_5xx = [c for c in five_hundreds if c.status != 503 or not during_outage(c)]
    no_answer = [c for c in calls if c.status is None]
    retried_503 = [c for c in calls if c.by == "driver" and c.status == 503]
    slowest_503 = max((c.seconds for c in calls if c.status == 503 and c.seconds is not None), default=0.0)
    retry_after_missing = sum(1 for c in retried_503 if not c.retry_after)

    redemptions = list(Redemption.objects.values("dedup_key", "credential_id", "delivery__status", "delivery__external_event_id"))
    accepted = InboundRequest.objects.filter(kind="conversion", status_code=202).count()
    duplicates_answered = InboundRequest.objects.filter(kind="conversion", status_code=200).count()
    delivered = [r for r in redemptions if r["delivery__status"] == Delivery.Status.DELIVERED]
    ids = {str(r["dedup_key"]) for r in redemptions}
    received = attentive.received()
    received_ids = Counter(e["body"].get("externalEventId") for e in received["events"])
    twice = {k: v for k, v in received_ids.items() if v > 1}
    # At-least-once's two ways to send an event twice, each on record as a try whose answer the
    # portal never had: a worker SIGKILLed (or without its database past the lease) after the
    # send, before writing the answer — the next claim records an "unknown" try — and an answer
    # that came after the portal's timeout (a busy machine: the sandbox shares these two cores).
    # Every copy Attentive received beyond the delivered tries must be one of those.
    unanswered = Counter()
    for event_id, outcome, status_code, error in DeliveryAttempt.objects.filter(
        delivery__external_event_id__in=list(twice)
    ).values_list("delivery__external_event_id", "outcome", "status_code", "error"):
        if outcome == "delivered":
            unanswered[event_id, "delivered"] += 1
        elif outcome == "unknown":
            unanswered[event_id, "unknown"] += 1
        elif status_code is None and "did not answer" in error:
            unanswered[event_id, "timeout"] += 1
    explained = {
        event_id for event_id, copies in twice.items()
        if copies - unanswered[event_id, "delivered"] <= unanswered[event_id, "unknown"] + unanswered[event_id, "timeout"]
    }
    at_a_kill = {event_id: twice[event_id] for event_id in explained if unanswered[event_id, "unknown"]}
    answered_late = {event_id: twice[event_id] for event_id in explained if event_id not in at_a_kill}
    twice_tries = {
        event_id: list(
            DeliveryAttempt.objects.filter(delivery__external_event_id=event_id).order_by("started_at")
            .values_list("outcome", "status_code", "error")
        )
        for event_id in list(twice)[:10]
    }
    copies = Counter(entry.get("copies", "once") for entry in sparkfly.callbacks if entry.get("copy", 0) == 0)

    redeemed = len(driver.redeemed)
    phases = Counter(
        "before" if not outages or at < outages[0][0] else "during" if at <= outages[-1][1] else "after"
        for at in driver.redeemed_at
    )
    checks = {
        "every redeem at Sparkfly answered 201": not driver.refused,
        "every callback finally accepted": not driver._pending,
        "redeemed = callbacks accepted (202)": redeemed == accepted,
        "callbacks accepted = Redemption rows": accepted == len(redemptions),
        "Redemption rows = deliveries delivered": len(redemptions) == len(delivered),
        "deliveries delivered = distinct events Attentive received": len(delivered) == len(set(received_ids) & ids) == len(received_ids),
        "every accepted redemption reached Attentive": ids == set(received_ids),
        "no event reached Attentive twice, but sends whose answer the portal never had (on record)":
            not (set(twice) - explained),
        "no 5xx but 503s during the restart": not bad_5xx,
        "every 503 carried Retry-After": retry_after_missing == 0,
        "every callback answered (none left to Sparkfly's timeout)": not no_answer,
        "the redeemed credentials are the recorded ones": set(driver.redeemed) == {r["credential_id"] for r in redemptions},
    }
    return {
        "redeemed": redeemed, "refused_redeems": driver.refused[:5],
        "callback_calls": len(calls), "callback_statuses": dict(statuses), "callbacks_no_answer": len(no_answer),
        "no_answer_errors": dict(Counter(f"{c.by}: {(c.error or '')[:120]}" for c in no_answer).most_common(5)) if no_answer else {},
        "no_answer_during_outage": sum(1 for c in no_answer if during_outage(c)),
        # When (seconds into the run) calls went unanswered, and the kills and outages, to tell them apart.
        "timeline": {
            "no_answer": sorted(round(c.at - started, 1) for c in no_answer),
            "sigkills": [round(at - started, 1) for at, _ in kills],
            "outages": [(round(down - started, 1), round(up - started, 1)) for down, up in outages],
        },
        "duplicated_by_sparkfly": {"concurrent": copies.get("concurrent", 0), "again": copies.get("again", 0)},
        "driver_resends": sum(1 for c in calls if c.by == "driver"),
        "answered_503": statuses.get("503", 0), "slowest_503_seconds": round(slowest_503, 2),
        "bad_5xx": [(c.status, c.by) for c in bad_5xx][:10],
        "accepted_202": accepted, "duplicates_answered_200": duplicates_answered,
        "redemption_rows": len(redemptions), "deliveries_delivered": len(delivered),
        "attentive_distinct_events": len(received_ids), "attentive_events_twice": twice,
        "attentive_twice_answer_unknown": len(at_a_kill),
        "attentive_twice_answered_after_timeout": len(answered_late),
        "attentive_twice_tries": twice_tries,
        "attentive_injected": received.get("injected", {}), "attentive_rate_limited": received.get("rate_limited", {}),
        "redeemed_before_during_after_outage": [phases["before"], phases["during"], phases["after"]],
        "sigkills": len(kills), "pg_restarts": len(outages),
        "outage_seconds": [round(up - down, 1) for down, up in outages],
        "credentials_seen": len(ours),
        "checks": checks,
    }


def print_report(report: dict, args) -> None:
    injected = report["attentive_injected"]
    rows = [
        ("injected: callbacks Sparkfly delivered twice (at once / after)",
         f"{report['duplicated_by_sparkfly']['concurrent']:,} / {report['duplicated_by_sparkfly']['again']:,}",
         f"~{args.duplicates:.0%} of {args.callbacks:,}" if args.scenario == "chaos" else "0"),
        ("injected: Attentive failures 500 / 429 / timeout",
         f"{injected.get('500', 0):,} / {injected.get('429', 0):,} / {injected.get('timeout', 0):,}",
         f"{args.attentive_fail_rate:.0%} of requests" if args.scenario == "chaos" else "0"),
        ("injected: workers killed with SIGKILL", f"{report['sigkills']}", f"{args.sigkills if args.scenario == 'chaos' else 0}"),
        ("injected: PostgreSQL restarts (seconds down, shutdown)",
         f"{report['pg_restarts']} ({', '.join(f'{s} s {m}' for s, m in zip(report['outage_seconds'], report['shutdowns']))})",
         "fast shutdown (immediate after 20 s), then start"),
        ("redeemed at Sparkfly (201)", f"{report['redeemed']:,}", f"{args.callbacks:,}"),
        ("  of which before / during / after the outage", " / ".join(f"{n:,}" for n in report["redeemed_before_during_after_outage"]), "-"),
        ("callback calls (incl. duplicates and resends)", f"{report['callback_calls']:,}", "-"),
        ("  answered 503 (all with Retry-After) / slowest", f"{report['answered_503']:,} / {report['slowest_503_seconds']} s", "only while PostgreSQL is down"),
        ("  other 5xx / no answer within Sparkfly's 5 s", f"{len(report['bad_5xx'])} / {report['callbacks_no_answer']}", "0 / 0"),
        ("  sent again by Sparkfly (the driver)", f"{report['driver_resends']:,}", "-"),
        ("callbacks accepted (202) / duplicates answered 200", f"{report['accepted_202']:,} / {report['duplicates_answered_200']:,}", "202 = redeemed"),
        ("Redemption rows", f"{report['redemption_rows']:,}", "= redeemed"),
        ("deliveries delivered", f"{report['deliveries_delivered']:,}", "= redeemed"),
        ("distinct events Attentive received / received twice",
         f"{report['attentive_distinct_events']:,} / {len(report['attentive_events_twice'])}"
         f" ({report['attentive_twice_answer_unknown']} sent before their worker stopped: answer unknown,"
         f" {report['attentive_twice_answered_after_timeout']} answered after the timeout)", "= redeemed / 0"),
        ("worker processes started (initial + after an exit)", f"{report['worker_starts']} ({report['workers']} + {report['worker_starts'] - report['workers']})", "-"),
        ("workers that lost the database and went on in-process", f"{report['worker_lost_database']}", "-"),
        ("drained after the last redeem", f"{report['drain_seconds']} s", f"<= {args.drain_timeout:g} s"),
    ]
    print_table(
        f"Chaos ({report['scenario']}): {args.callbacks:,} redemptions at {args.rate:g}/s, {args.workers} workers x "
        f"concurrency {args.concurrency}, gunicorn {args.web_workers} workers; {os.cpu_count()} cores", rows,
    )
    print(f"\nsetup: {report['setup_seconds']} s; recovery settings: "
          + ", ".join(f"{k}={v}" for k, v in report["recovery"].items()))
    failed = [name for name, ok in report["checks"].items() if not ok]
    for name, ok in report["checks"].items():
        print(f"  {'ok  ' if ok else 'FAIL'} {name}")
    print("all checks passed" if not failed else f"CHECKS FAILED: {', '.join(failed)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", choices=("chaos", "outage"), default="chaos")
    parser.add_argument("--callbacks", type=int, default=5000, help="credentials redeemed")
    parser.add_argument("--rate", type=float, default=60, help="redemptions per second")
    parser.add_argument("--duplicates", type=float, default=0.2, help="share of callbacks Sparkfly delivers twice")
    parser.add_argument("--attentive-fail-rate", type=float, default=0.3)
    parser.add_argument("--sigkills", type=int, default=3)
    parser.add_argument("--pg-restarts", type=int, default=1)
    parser.add_argument("--outage-seconds", type=float, default=3.0, help="how long PostgreSQL stays down")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--web-workers", type=int, default=3)
    parser.add_argument("--drain-timeout", type=float, default=300)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", type=Path, help="write the figures here too")
    parser.add_argument("--logs", type=Path, help="keep the logs (gunicorn, workers, PostgreSQL) in this folder")
    args = parser.parse_args()
    report = run(args)
    print_report(report, args)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str))
    checks = report["checks"]
    ok = all(checks.values()) and report["drained"]
    if args.scenario == "outage":
        ok = ok and report["worker_starts"] == args.workers and report["portal_alive"]
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit("interrupted: the child processes and the PostgreSQL server are stopped")

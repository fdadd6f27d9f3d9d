"""``/healthz``: the load balancer's check, and ``/healthz?full``, the monitoring's.

* ``GET /healthz`` answers 200 whenever this web process can answer at all: a load balancer
  takes a node out when its check fails, and a database outage or stopped workers are not
  fixed by taking out every web node at once (Sparkfly would then get the balancer's own error,
  with no Retry-After, instead of the webhooks' 503 + Retry-After). The body still says how the
  database and the workers are.
* ``GET /healthz?full`` answers 503 unless the database answers and a worker sent a heartbeat
  in the last WORKER_HEARTBEAT_MAX_AGE_SECONDS: point monitoring (an uptime check, a pager) at it.

Both read the database in one query on a thread of their own and wait for it a bounded time
(the load balancer's check LIVENESS_WAIT): a server that takes connections without answering
(one shutting down, a network black hole) would otherwise hold the check for the whole
DATABASE_CONNECT_TIMEOUT, and the balancer, whose checks time out in a few seconds, would take
the node out after all. One query is in flight per process at a time; checks arriving meanwhile
wait for its answer.

``HealthCheckMiddleware`` answers /healthz before Django validates the Host header: balancers
often check each node by its IP address, which is not in ALLOWED_HOSTS (Django would answer 400
and log an ERROR). Nothing else skips that validation, and the answer uses no part of the Host.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as WaitedTooLong
from datetime import datetime, timedelta

from django.conf import settings
from django.db import DatabaseError, connection, transaction
from django.http import HttpResponse, JsonResponse
from django.utils import timezone
from psycopg.errors import QueryCanceled

PATH = "/healthz"
# Seconds the load balancer's check waits for the database's answer: under the shortest check
# timeout balancers use (Kubernetes' probes: 1 s), so a silent database never fails the check.
LIVENESS_WAIT = 0.5
# Seconds the database may take over the read once connected (connecting has its own
# connect_timeout): a bit over LIVENESS_WAIT, so the balancer's check gives up first and its
# read is never cut short; the full check reports a longer read as no answer.
READ_TIMEOUT = 1.0

_reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="healthz")
_in_flight: Future | None = None
_in_flight_lock = threading.Lock()


def _newest_heartbeat() -> datetime | None:
    """On the reader's thread: the newest worker heartbeat (None: no worker). Its connection is
    closed after each read: kept (CONN_MAX_AGE), it would add one to every web process's share
    of max_connections; a check every few seconds opening one costs the server little.

    The read ends by itself after READ_TIMEOUT: a read blocked on a lock (a migration's on
    procrastinate_workers) would otherwise keep this thread busy, and Python waits for the
    executor's threads at exit, so a recycled or SIGTERMed gunicorn worker would hang for its
    whole graceful timeout. SET LOCAL: the setting ends with the transaction (a pooler in
    transaction mode passes the connection on clean)."""
    try:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(f"SET LOCAL statement_timeout = {int(READ_TIMEOUT * 1000)}")
            cursor.execute("SELECT max(last_heartbeat) FROM procrastinate_workers")
            return cursor.fetchone()[0]
    finally:
        connection.close()


def _read_database(wait: float) -> tuple[datetime | None, str]:
    """The newest heartbeat, and "" or why the database could not be read within ``wait`` s."""
    global _in_flight
    with _in_flight_lock:
        if _in_flight is None or _in_flight.done():
            _in_flight = _reader.submit(_newest_heartbeat)
        reading = _in_flight
    try:
        return reading.result(timeout=wait), ""
    except WaitedTooLong:
        return None, f"no answer within {wait:g} s"
    except DatabaseError as exc:
        if isinstance(exc.__cause__, QueryCanceled):
            return None, f"no answer within {READ_TIMEOUT:g} s of connecting"
        return None, f"database unreachable: {exc.__class__.__name__}"


def health(*, wait: float) -> dict:
    """What both checks report: status ok or degraded, the database and the worker's state,
    and details of what is not ok."""
    newest, database_error = _read_database(wait)
    report: dict = {"status": "ok", "database": "ok", "worker": "ok", "details": {}}
    if database_error:
        report["database"], report["worker"] = "unreachable", "unknown"
        report["details"] = {"database": database_error, "worker": "not checked: the database did not answer"}
    elif newest is None:
        report["worker"] = "none"
        report["details"]["worker"] = "no worker has sent a heartbeat; start one with `manage.py run_worker`"
    else:
        age = timezone.now() - newest
        report["last_worker_heartbeat"], report["worker_heartbeat_age_seconds"] = newest.isoformat(), round(age.total_seconds(), 1)
        max_age = timedelta(seconds=settings.WORKER_HEARTBEAT_MAX_AGE_SECONDS)
        if age > max_age:
            report["worker"] = "stale"
            report["details"]["worker"] = (
                f"the newest worker heartbeat is older than {max_age.total_seconds():.0f} s: "
                "is `manage.py run_worker` running, and can it reach the database?"
            )
    if report["details"]:
        report["status"] = "degraded"
    return report


def healthz(request) -> HttpResponse:
    if request.method not in ("GET", "HEAD"):
        return HttpResponse(status=405, headers={"Allow": "GET, HEAD"})
    if "full" in request.GET:
        # Text when DATABASE_URL's query gives a fraction (?connect_timeout=2.5): django-environ
        # makes only whole numbers ints (psycopg accepts the text).
        connect_timeout = float(settings.DATABASES["default"]["OPTIONS"].get("connect_timeout", 5))
        report = health(wait=connect_timeout + 1)
        status = 200 if report["status"] == "ok" else 503
    else:
        report, status = health(wait=LIVENESS_WAIT), 200
    response = JsonResponse(report, status=status, headers={"Cache-Control": "no-store"})
    # Django logs every 5xx at ERROR: monitoring polls this all through an outage, and a line a
    # poll would bury the ones that say what broke. The access log still has each answer.
    response._has_been_logged = True
    if request.method == "HEAD":
        response.content = b""
    return response


class HealthCheckMiddleware:
    """Answers /healthz itself, before any middleware that validates the Host header; placed
    right after the request id's (which reads no Host) in MIDDLEWARE."""

    def __init__(self, get_response) -> None:
        self.get_response = get_response

    def __call__(self, request):
        if request.path_info == PATH:
            return healthz(request)
        return self.get_response(request)

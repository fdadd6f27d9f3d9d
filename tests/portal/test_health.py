"""/healthz (the load balancer's check) answers 200 while this process can answer, saying how
the database and the workers are; /healthz?full (monitoring's) answers 503 unless the database
answers and a worker sent a heartbeat recently. With the database down:
tests/deploy/test_health_checks.py."""

from __future__ import annotations

import copy
import logging
from datetime import timedelta

import psycopg
import pytest
from django.db import DatabaseError, connection
from django.utils import timezone

from portal import health

# The checks read the database on a thread of their own: the heartbeats must be committed.
pytestmark = pytest.mark.django_db(transaction=True)


def add_worker_heartbeat(age: timedelta):
    with connection.cursor() as cursor:
        cursor.execute("INSERT INTO procrastinate_workers (last_heartbeat) VALUES (%s)", [timezone.now() - age])


def test_healthy_with_a_recent_worker_heartbeat(client):
    add_worker_heartbeat(timedelta(seconds=5))
    response = client.get("/healthz?full")
    assert response.status_code == 200
    body = response.json()
    assert (body["status"], body["database"], body["worker"], body["details"]) == ("ok", "ok", "ok", {})
    assert 4 <= body["worker_heartbeat_age_seconds"] < 60
    assert client.get("/healthz").status_code == 200


def test_without_any_worker_the_full_check_fails_and_the_load_balancers_does_not(client):
    full = client.get("/healthz?full")
    assert full.status_code == 503
    assert full.json()["worker"] == "none" and "manage.py run_worker" in full.json()["details"]["worker"]
    lb = client.get("/healthz")
    assert lb.status_code == 200
    assert lb.json()["status"] == "degraded"


def test_a_stale_heartbeat_fails_the_full_check_only(client, settings):
    settings.WORKER_HEARTBEAT_MAX_AGE_SECONDS = 30
    add_worker_heartbeat(timedelta(minutes=5))
    full = client.get("/healthz?full")
    assert full.status_code == 503
    assert full.json()["worker"] == "stale" and full.json()["worker_heartbeat_age_seconds"] >= 300
    assert client.get("/healthz").status_code == 200


def test_a_host_not_in_allowed_hosts_gets_the_health_check_and_nothing_else(client, caplog):
    """Load balancers check each node by its address; everything else keeps Django's Host check."""
    add_worker_heartbeat(timedelta(seconds=5))
    with caplog.at_level(logging.INFO):
        assert client.get("/healthz", HTTP_HOST="10.0.3.7").status_code == 200
        assert client.get("/healthz?full", HTTP_HOST="10.0.3.7:8000").status_code == 200
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert client.get("/metrics", HTTP_HOST="10.0.3.7").status_code == 400
    assert client.get("/accounts/login/", HTTP_HOST="10.0.3.7").status_code == 400
    assert client.get("/healthz/", HTTP_HOST="10.0.3.7").status_code == 400  # only the exact path


def test_get_and_head_only(client):
    assert client.head("/healthz").status_code == 200
    response = client.post("/healthz")
    assert response.status_code == 405 and response["Allow"] == "GET, HEAD"


def test_a_read_blocked_by_a_lock_ends_by_itself_and_frees_the_thread(client):
    """A read waiting on a lock (a migration's) is cancelled by its statement timeout: the
    reader's thread, which Python waits for at exit, never holds a stopping worker."""
    add_worker_heartbeat(timedelta(seconds=5))
    conninfo = {k: v for k, v in connection.get_connection_params().items() if k not in ("cursor_factory", "context")}
    with psycopg.connect(**conninfo) as migration:  # one transaction, holding the lock until it ends
        migration.execute("LOCK TABLE procrastinate_workers IN ACCESS EXCLUSIVE MODE")
        lb = client.get("/healthz")
        assert lb.status_code == 200
        assert lb.json()["database"] == "unreachable"
        assert lb.json()["details"]["database"] == f"no answer within {health.LIVENESS_WAIT:g} s"
        # Still locked: the read ends by itself, cancelled, and the thread is free again.
        with pytest.raises(DatabaseError):
            health._in_flight.result(timeout=15)
        full = client.get("/healthz?full")
        assert full.status_code == 503
        assert full.json()["details"]["database"] == f"no answer within {health.READ_TIMEOUT:g} s of connecting"
        migration.rollback()
    assert client.get("/healthz?full").status_code == 200


# Only this request reads the replaced DATABASES; the connections keep theirs.
@pytest.mark.filterwarnings("ignore:Overriding setting DATABASES")
def test_a_connect_timeout_given_as_text_in_database_url(client, settings):
    """django-environ passes DATABASE_URL's ?connect_timeout=2.5 on as the text "2.5"."""
    add_worker_heartbeat(timedelta(seconds=5))
    databases = copy.deepcopy(settings.DATABASES)
    databases["default"]["OPTIONS"]["connect_timeout"] = "2.5"
    settings.DATABASES = databases
    response = client.get("/healthz?full")
    assert response.status_code == 200 and response.json()["status"] == "ok"

"""/healthz: 200 only when the database answers and a worker sent a heartbeat recently."""

from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

pytestmark = pytest.mark.django_db


def add_worker_heartbeat(age: timedelta):
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO procrastinate_workers (last_heartbeat) VALUES (%s)", [timezone.now() - age]
        )


def test_healthy_with_a_recent_worker_heartbeat(client):
    add_worker_heartbeat(timedelta(seconds=5))
    response = client.get("/healthz")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["checks"]["database"]["ok"] and body["checks"]["worker"]["ok"]


def test_unhealthy_without_any_worker(client):
    response = client.get("/healthz")
    assert response.status_code == 503
    assert "no worker" in response.json()["checks"]["worker"]["detail"]


def test_unhealthy_when_the_newest_heartbeat_is_stale(client, settings):
    settings.WORKER_HEARTBEAT_MAX_AGE_SECONDS = 30
    add_worker_heartbeat(timedelta(minutes=5))
    response = client.get("/healthz")
    assert response.status_code == 503
    assert response.json()["checks"]["worker"]["age_seconds"] >= 300


def test_only_get_is_allowed(client):
    assert client.post("/healthz").status_code == 405


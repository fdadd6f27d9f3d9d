"""Fixtures shared by every test package."""

from __future__ import annotations

import os
import socket
import time

import pytest
from django.db import connection
from procrastinate.contrib.django import app as procrastinate_app

from portal.dburl import database_url

from sparkfly_sync.client import RetryPolicy, SparkflyClient



@pytest.fixture(scope="session")
def django_db_modify_db_settings(django_db_modify_db_settings_parallel_suffix):
    """One test database per pytest process, so two runs on one machine (say, `make test`
    while another suite runs) never drop each other's database."""
    from django.conf import settings

    database = settings.DATABASES["default"]
    base = database.get("TEST", {}).get("NAME") or f"test_{database['NAME']}"
    database.setdefault("TEST", {})["NAME"] = f"{base}_{os.getpid()}"


class RecordedSleeps(list):
    """A stand-in for ``time.sleep`` that records waits instead of waiting (retry schedules
    are injectable so a backoff policy is checked in milliseconds)."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


@pytest.fixture
def recorded_sleeps():
    return RecordedSleeps()


@pytest.fixture
def sparkfly_client(sparkfly_sandbox, recorded_sleeps):
    """A client of the sandbox that records its retry waits instead of sleeping."""
    return SparkflyClient(
        base_url=sparkfly_sandbox.base_url,
        identity="sandbox",
        key="sandbox",
        retry=RetryPolicy(attempts=3, backoff=0.5),
        sleep=recorded_sleeps,
    )


@pytest.fixture
def sparkfly_settings(settings, sparkfly_sandbox):
    """Point the portal's settings at the sandbox (what `make run` does without credentials)."""
    settings.SPARKFLY_API_URL = sparkfly_sandbox.base_url
    settings.SPARKFLY_IDENTITY = "sandbox"
    settings.SPARKFLY_KEY = "sandbox"
    return settings


@pytest.fixture(autouse=True)
def fast_password_hashing(settings):
    # admin_client and friends create users with passwords; the default hasher is slow by design.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(autouse=True)
def empty_job_queue(request):
    """Tests in autocommit mode (``transaction=True``) commit procrastinate jobs, and Django's
    flush leaves procrastinate's unmanaged tables alone: empty them around such tests."""
    marker = request.node.get_closest_marker("django_db")
    transactional = "transactional_db" in request.fixturenames or bool(marker and marker.kwargs.get("transaction"))
    if not transactional:
        yield
        return
    request.getfixturevalue("transactional_db")

    def truncate():
        with connection.cursor() as cursor:
            cursor.execute(
                "TRUNCATE procrastinate_jobs, procrastinate_events, procrastinate_periodic_defers, "
                "procrastinate_workers RESTART IDENTITY CASCADE"
            )

    truncate()
    yield
    truncate()


def run_worker_until_idle(queues: list[str] | None = None) -> None:
    """Process every job that is due now, with the connector `manage.py procrastinate worker`
    uses (a real worker; the Django connector cannot run one)."""
    with procrastinate_app.replace_connector(procrastinate_app.connector.get_worker_connector()):
        procrastinate_app.run_worker(
            queues=queues, wait=False, install_signal_handlers=False, listen_notify=False
        )


def free_port() -> int:
    """A loopback port nothing listens on (for a server to start on, or to be refused at once)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def database_url_for_subprocess(application_name: str) -> str:
    """A DATABASE_URL for a child process to use the test database, tagged so
    ``wait_for_backends_to_end`` can find its sessions."""
    return database_url(connection.settings_dict, application_name=application_name)


def wait_for_backends_to_end(application_name: str, timeout: float = 10) -> None:
    """After killing a child, wait until PostgreSQL has ended its sessions: a killed client's
    backend finishes its statement (and holds its locks) for a few more milliseconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", [application_name])
            if cursor.fetchone()[0] == 0:
                return
        time.sleep(0.01)
    raise AssertionError(f"the database sessions of {application_name} did not end within {timeout} s")

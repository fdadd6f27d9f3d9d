"""Fixtures shared by every test package."""

from __future__ import annotations

import pytest
from django.db import connection

from sparkfly_sync.client import RetryPolicy, SparkflyClient



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

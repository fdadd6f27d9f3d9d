"""Fixtures shared by every test package."""

from __future__ import annotations

import pytest

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

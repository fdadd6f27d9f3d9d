"""Four real worker processes share one rate limit: Attentive's 150/s is never exceeded."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest
from django.db import transaction

from attentive_sync.delivery import forward
from attentive_sync.events import CustomEvent, EventUser
from attentive_sync.models import AttentiveSettings, Delivery
from tests.conftest import database_url_for_subprocess, wait_for_backends_to_end

ROOT = Path(__file__).resolve().parents[2]
EVENTS = 600


@pytest.mark.django_db(transaction=True)
def test_four_worker_processes_against_a_150_per_second_sandbox_get_no_429s(attentive_sandbox_factory):
    server = attentive_sandbox_factory(api_key="sk_test_WORKERS", rate_limit=150)
    settings = AttentiveSettings.load()
    settings.api_key, settings.api_url, settings.enabled = "sk_test_WORKERS", server.base_url, True
    settings.rate_limit_per_second = 140
    settings.save()
    now = datetime.now(timezone.utc)
    with transaction.atomic():
        for i in range(EVENTS):
            forward(
                CustomEvent(
                    type="loyalty.points_redeemed",
                    user=EventUser(client_user_id=f"member-{i}"),
                    occurred_at=now,
                    external_event_id=f"evt-{i}",
                    properties={"n": i},
                )
            )
    env = {**os.environ, "DATABASE_URL": database_url_for_subprocess("delivery-worker"), "LOG_LEVEL": "WARNING"}
    workers = [
        subprocess.Popen(
            [sys.executable, str(ROOT / "manage.py"), "procrastinate", "worker", "--queues", "deliveries", "--concurrency", "4"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for _ in range(4)
    ]
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and Delivery.objects.exclude(status="delivered").exists():
            assert all(worker.poll() is None for worker in workers), "a worker died"
            time.sleep(0.2)
    finally:
        for worker in workers:
            worker.terminate()
        for worker in workers:
            # A stopping worker finishes its running job first (a batch drains up to 10 s): at a
            # load average of 6, 20 s was once not enough.
            worker.wait(60)
        wait_for_backends_to_end("delivery-worker")

    sandbox = server.sandbox
    assert Delivery.objects.filter(status="delivered").count() == EVENTS
    assert len(sandbox.events()) == EVENTS
    assert sandbox.duplicate_external_event_ids() == {}
    # The limit is shared: four limiters of their own would send at 4 × 140/s against 150/s and
    # draw hundreds of 429s. A handful can still come from requests that a loaded machine
    # delays in flight and delivers bunched (seen: 3 and 5 of 600 on a busy CI box); the
    # 0.1 % goal is the drain benchmark's to measure on a quiet machine (README, Benchmarks).
    assert sandbox.rate_limited().get("POST /v1/events/custom", 0) <= EVENTS * 0.02

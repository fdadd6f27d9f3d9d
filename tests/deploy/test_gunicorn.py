"""The production web server: gunicorn started with gunicorn.conf.py (as the Procfile does) serves
the portal against the test database, and its access log never shows a callback's secret."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import requests
from django.urls import reverse

from portal.logs import MASK
from sparkfly_sync.models import ConversionEndpoint, Redemption
from tests.conftest import database_url_for_subprocess, free_port, wait_for_backends_to_end
from tests.deploy.gunicorn import deployed_gunicorn

ROOT = Path(__file__).resolve().parents[2]


def test_the_procfile_runs_gunicorn_with_this_config_and_a_worker():
    processes = dict(line.split(": ", 1) for line in (ROOT / "Procfile").read_text().splitlines() if line.strip())
    assert processes["web"] == "gunicorn --config gunicorn.conf.py"
    assert processes["worker"].startswith("python manage.py run_worker")
    assert processes["release"] == "python manage.py migrate --noinput"


@pytest.mark.django_db(transaction=True)
def test_gunicorn_access_log_masks_the_callback_secret(tmp_path):
    endpoint = ConversionEndpoint.objects.create(channel_id=11)
    port = free_port()
    log_path = tmp_path / "gunicorn.log"
    env = {
        **os.environ,
        "DATABASE_URL": database_url_for_subprocess("gunicorn-test"),
        "PORT": str(port),
        "WEB_CONCURRENCY": "2",
        "CONN_MAX_AGE": "60",
        "LOG_FORMAT": "plain",  # gunicorn's combined format (the JSON lines: test_gunicorn_json_logs.py)
    }
    try:
        with deployed_gunicorn(env, port, log_path) as base:
            path = reverse(
                "sparkfly-conversion-callback", kwargs={"endpoint_uuid": str(endpoint.uuid), "secret": endpoint.secret}
            )
            answer = requests.get(
                base + path,
                params={"credential_id": "501", "offer_id": "7", "redeemed_at": "2026-01-02T03:04:05Z", "status": "redeemed"},
                timeout=10,
            )
            assert answer.status_code == 202, answer.text
    finally:
        wait_for_backends_to_end("gunicorn-test")

    assert Redemption.objects.count() == 1
    log = log_path.read_text()
    assert endpoint.secret not in log
    access_lines = [line for line in log.splitlines() if "/conversions" in line]
    assert len(access_lines) == 1, log
    assert f"/hooks/sparkfly/channels/{endpoint.uuid}/{MASK}/conversions?credential_id=501" in access_lines[0]
    assert '" 202 ' in access_lines[0]

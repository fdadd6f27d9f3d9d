"""gunicorn with LOG_FORMAT=json (the default with DEBUG off): every line it and the portal
write is one JSON object; an access line carries the request id the portal echoed, and so does
the portal's own line about that request; no callback secret anywhere."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import requests

from portal.logs import MASK
from tests.conftest import database_url_for_subprocess, wait_for_backends_to_end
from tests.deploy.test_gunicorn import free_port

ROOT = Path(__file__).resolve().parents[2]
SECRET = "s3cr3t-" + "y" * 30


@pytest.mark.django_db(transaction=True)
def test_gunicorn_writes_json_lines_with_the_request_id(tmp_path):
    port = free_port()
    log_path = tmp_path / "gunicorn.log"
    env = {
        **os.environ,
        "DATABASE_URL": database_url_for_subprocess("gunicorn-json-test"),
        "PORT": str(port),
        "WEB_CONCURRENCY": "1",
        "LOG_FORMAT": "json",
    }
    gunicorn = Path(sys.executable).with_name("gunicorn")
    with open(log_path, "wb") as log:
        server = subprocess.Popen(
            [str(gunicorn), "--config", str(ROOT / "gunicorn.conf.py")], cwd=ROOT, env=env, stdout=log, stderr=log
        )
    base = f"http://127.0.0.1:{port}"
    callback = f"/hooks/sparkfly/channels/{uuid.uuid4()}/{SECRET}/conversions"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert server.poll() is None, log_path.read_text()
            try:
                requests.get(base + "/healthz", timeout=5)
                break
            except requests.ConnectionError:
                assert time.monotonic() < deadline, "gunicorn did not answer within 60 s"
                time.sleep(0.2)
        answer = requests.get(base + callback, params={"credential_id": "1"}, headers={"X-Request-ID": "lb-42"}, timeout=10)
        assert answer.status_code == 404 and answer.headers["X-Request-ID"] == "lb-42"
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
        wait_for_backends_to_end("gunicorn-json-test")

    text = log_path.read_text()
    assert SECRET not in text
    lines = [json.loads(line) for line in text.splitlines() if line.strip()]  # each line is one object
    assert all({"time", "level", "logger", "message"} <= set(line) for line in lines)
    [access] = [line for line in lines if line["logger"] == "gunicorn.access" and line.get("request_id") == "lb-42"]
    assert (access["method"], access["status"]) == ("GET", 404)
    assert access["path"] == callback.replace(SECRET, MASK) + "?credential_id=1"
    [portal_line] = [line for line in lines if line["logger"] == "django.request" and "/conversions" in line["message"]]
    assert portal_line["request_id"] == "lb-42" and portal_line["level"] == "WARNING"
    assert any(line["logger"] == "gunicorn.error" for line in lines)  # gunicorn's own lines too

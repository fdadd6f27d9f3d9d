"""gunicorn with LOG_FORMAT=json (the default with DEBUG off): every line it and the portal
write is one JSON object; an access line carries the request id the portal echoed, and so does
the portal's own line about that request; no callback secret anywhere."""

from __future__ import annotations

import json
import os
import uuid

import pytest
import requests

from portal.logs import MASK
from tests.conftest import database_url_for_subprocess, wait_for_backends_to_end
from tests.deploy.gunicorn import deployed_gunicorn
from tests.conftest import free_port

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
    callback = f"/hooks/sparkfly/channels/{uuid.uuid4()}/{SECRET}/conversions"
    try:
        with deployed_gunicorn(env, port, log_path) as base:
            answer = requests.get(
                base + callback, params={"credential_id": "1"}, headers={"X-Request-ID": "lb-42"}, timeout=10
            )
            assert answer.status_code == 404 and answer.headers["X-Request-ID"] == "lb-42"
    finally:
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

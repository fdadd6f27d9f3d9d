"""The deployment's gunicorn with its database down: the load balancer's check (/healthz) still
answers 200, saying so, and monitoring's (/healthz?full) answers 503; a check by IP address (a
Host not in ALLOWED_HOSTS) is answered, anything else with that Host still refused."""

from __future__ import annotations

import os
import socket
import time

import requests

from tests.conftest import free_port
from tests.deploy.gunicorn import deployed_gunicorn


def _env(database_url: str, port: int, connect_timeout: int) -> dict:
    return {
        **{key: value for key, value in os.environ.items() if key != "DATABASE_URL"},
        "DATABASE_URL": database_url, "DATABASE_CONNECT_TIMEOUT": str(connect_timeout),
        "SECRET_KEY": "health-test", "DEBUG": "false", "ALLOWED_HOSTS": "portal.example.com",
        "SECURE_SSL_REDIRECT": "true", "PORT": str(port), "WEB_CONCURRENCY": "1", "CONN_MAX_AGE": "60",
        "LOG_FORMAT": "plain",
    }


def test_database_refusing_connections_the_balancers_check_passes_and_monitorings_fails(tmp_path):
    port = free_port()
    nobody = f"postgres://portal@127.0.0.1:{free_port()}/portal"  # nothing listens: refused at once
    log = tmp_path / "gunicorn.log"
    with deployed_gunicorn(_env(nobody, port, connect_timeout=5), port, log) as base:
        # By the node's address, as balancers check: plain http, a Host not in ALLOWED_HOSTS.
        lb = requests.get(f"{base}/healthz", timeout=10)
        full = requests.get(f"{base}/healthz?full", timeout=10)
        metrics = requests.get(f"{base}/metrics", timeout=10, allow_redirects=False)

    assert lb.status_code == 200, lb.text
    assert lb.json()["database"] == "unreachable" and lb.json()["status"] == "degraded"
    assert "OperationalError" in lb.json()["details"]["database"]
    assert full.status_code == 503 and full.json()["database"] == "unreachable"
    assert metrics.status_code == 400  # Django's Host check holds for everything else
    # One ERROR line: the /metrics request's Host, none for the checks (by IP, or failing).
    errors = [line for line in log.read_text().splitlines() if " ERROR " in line]
    assert len(errors) == 1 and "Invalid HTTP_HOST header" in errors[0], errors


def test_a_database_that_never_answers_does_not_hold_the_balancers_check(tmp_path):
    """A server taking connections without answering costs a connection the whole connect
    timeout (here 10 s); the balancer's check answers without waiting for it."""
    black_hole = socket.socket()
    black_hole.bind(("127.0.0.1", 0))
    black_hole.listen(64)  # the kernel completes each handshake; nobody ever answers
    port = free_port()
    silent = f"postgres://portal@127.0.0.1:{black_hole.getsockname()[1]}/portal"
    try:
        with deployed_gunicorn(_env(silent, port, connect_timeout=10), port, tmp_path / "gunicorn.log") as base:
            started = time.monotonic()
            lb = requests.get(f"{base}/healthz", headers={"Host": "portal.example.com"}, timeout=30)
            lb_seconds = time.monotonic() - started
            full = requests.get(f"{base}/healthz?full", headers={"Host": "portal.example.com"}, timeout=30)
    finally:
        black_hole.close()

    assert lb.status_code == 200 and lb.json()["database"] == "unreachable", lb.text
    assert "no answer within" in lb.json()["details"]["database"]
    # Well before the 10 s the database connection waits (under a second when the machine is idle).
    assert lb_seconds < 5, lb_seconds
    assert full.status_code == 503 and full.json()["database"] == "unreachable"

"""The dependency audit (scripts/audit.py, `make audit`, CI): the real pip-audit over this venv
against a stand-in OSV service on loopback, and against no service at all.

Every HTTPS request of the script and of pip-audit goes through a proxy address where nothing
listens, so pypi.org and api.osv.dev are unreachable whatever this machine's network allows; the
stand-in speaks plain HTTP on 127.0.0.1 and is reached directly."""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]
NOT_RUN = "dependency audit NOT run: no advisory service reachable from this machine"


def advisory(package: str, version: str, vuln_id: str) -> dict:
    return {
        "id": vuln_id,
        "summary": f"a test advisory for {package} {version}",
        "affected": [{"package": {"name": package, "ecosystem": "PyPI"}, "versions": [version]}],
    }


@contextmanager
def osv_stand_in(advisories: dict[tuple[str, str], list[dict]]) -> Iterator[tuple[str, list[tuple[str, str]]]]:
    """An OSV query endpoint answering ``advisories`` by (package, version), nothing for the rest;
    yields its URL and the (package, version) pairs it was asked about."""
    queries: list[tuple[str, str]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            query = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            key = (query["package"]["name"], query["version"])
            queries.append(key)
            vulns = advisories.get(key, [])
            body = json.dumps({"vulns": vulns} if vulns else {}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/v1/query", queries
    finally:
        server.shutdown()
        server.server_close()


def run_audit(*args: str) -> subprocess.CompletedProcess:
    dead_proxy = f"http://127.0.0.1:{free_port()}"
    env = {
        key: value for key, value in os.environ.items() if key.lower() not in {"http_proxy", "https_proxy", "no_proxy"}
    }
    env.update(https_proxy=dead_proxy, HTTPS_PROXY=dead_proxy)
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "audit.py"), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


CANARY = {("django", "3.2"): [advisory("django", "3.2", "PYSEC-TEST-CANARY")]}


def test_no_advisory_service_skips_loudly_in_ci_mode():
    unreachable = f"http://127.0.0.1:{free_port()}/v1/query"

    audit = run_audit("--if-unreachable", "skip", "--osv-url", unreachable)

    assert audit.returncode == 0, audit.stdout + audit.stderr
    assert NOT_RUN in audit.stderr
    assert "PyPI https://pypi.org/pypi/django/3.2/json" in audit.stderr  # what was tried, each
    assert f"OSV {unreachable}" in audit.stderr
    assert "No known vulnerabilities found" not in audit.stdout + audit.stderr  # pip-audit never ran


def test_no_advisory_service_fails_make_audit():
    audit = run_audit("--osv-url", f"http://127.0.0.1:{free_port()}/v1/query")

    assert audit.returncode != 0
    assert NOT_RUN in audit.stderr


def test_a_service_without_advisory_data_counts_as_unreachable():
    with osv_stand_in({}) as (url, queries):  # answers every query, knows of nothing
        audit = run_audit("--osv-url", url)

    assert audit.returncode != 0
    assert NOT_RUN in audit.stderr
    assert "no advisories for django 3.2, which has some" in audit.stderr
    assert queries == [("django", "3.2")]  # the probe only: pip-audit never ran


def test_a_reachable_service_audits_every_installed_package():
    django_version = importlib.metadata.version("django")
    with osv_stand_in(CANARY) as (url, queries):
        audit = run_audit("--if-unreachable", "skip", "--osv-url", url)

    assert audit.returncode == 0, audit.stdout + audit.stderr
    assert "No known vulnerabilities found" in audit.stdout + audit.stderr
    assert ("django", django_version) in queries
    assert ("requests", importlib.metadata.version("requests")) in queries
    assert len(set(queries)) > 50  # the whole venv, not a handful


def test_a_known_vulnerability_fails_ci():
    requests_version = importlib.metadata.version("requests")
    advisories = {**CANARY, ("requests", requests_version): [advisory("requests", requests_version, "PYSEC-TEST-1")]}
    with osv_stand_in(advisories) as (url, _):
        audit = run_audit("--if-unreachable", "skip", "--osv-url", url)

    assert audit.returncode != 0
    assert "PYSEC-TEST-1" in audit.stdout
    assert NOT_RUN not in audit.stderr

"""Issue 7, item 5: PostgreSQL goes away and comes back; the portal recovers by itself.

``benchmarks/chaos.py --scenario outage`` runs the whole portal against a PostgreSQL server of
its own (never the shared one: it is stopped): gunicorn (CONN_MAX_AGE=60, health checks on),
one ``run_worker`` process, the Sparkfly sandbox redeeming 150 credentials at 10/s (each
redemption calls the portal's conversion callback) and the Attentive sandbox. 20 % into the
run the server is stopped (fast shutdown) for 8 s, then started again. Sparkfly — the
script's driver — sends again every callback that got no 2xx, after its Retry-After.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]
CONNECT_TIMEOUT = 2  # DATABASE_CONNECT_TIMEOUT in the script's RECOVERY
SPARKFLY_CALLBACK_TIMEOUT = 5  # seconds Sparkfly waits for a callback's answer (the sandbox's)


def run_chaos(tmp_path: Path, *arguments: str, timeout: float) -> dict:
    """Run benchmarks/chaos.py with ``arguments``; its figures, and its output on failure."""
    report = tmp_path / "report.json"
    env = {key: value for key, value in os.environ.items() if key != "DATABASE_URL"}
    finished = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "chaos.py"), *arguments, "--json", str(report), "--logs", str(tmp_path)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout,
    )
    assert report.exists(), finished.stdout[-3000:] + finished.stderr[-5000:]
    figures = json.loads(report.read_text())
    figures["exit_status"], figures["output"] = finished.returncode, finished.stdout[-3000:]
    return figures


def test_callbacks_get_503_while_postgresql_is_down_and_all_recovers_without_a_restart(tmp_path):
    report = run_chaos(
        # 12 s down: longer than the worker's heartbeat interval plus its pool's 5 s wait (at the
        # run's 10 s stalled time) with room for a busy machine, so its procrastinate worker
        # surely gives up (at 8 s, one run in seven under load did not, and nothing was restarted).
        tmp_path, "--scenario", "outage", "--callbacks", "200", "--rate", "10", "--outage-seconds", "12",
        "--workers", "1", "--web-workers", "2", "--drain-timeout", "40", timeout=100,
    )
    before, during, after = report["redeemed_before_during_after_outage"]

    # While the server was down, callbacks were refused with 503 + Retry-After, in time: never a
    # 500, never a hang (the connect timeout bounds the wait; without it a callback would wait
    # for the server's return). The bound is Sparkfly's, not the 2 s connect timeout plus a
    # guessed margin: on a busy machine a callback also queues for a web worker.
    assert report["answered_503"] > 0
    assert report["bad_5xx"] == [] and report["callbacks_no_answer"] == 0
    assert report["checks"]["every 503 carried Retry-After"]
    assert report["slowest_503_seconds"] < SPARKFLY_CALLBACK_TIMEOUT
    # Redemptions came before, during and after the outage; every one was accepted once in the end.
    assert before > 0 and during > 0 and after > 0
    assert report["accepted_202"] == report["redemption_rows"] == report["redeemed"] == 200
    # The worker forwarded all of them, each once.
    assert report["deliveries_delivered"] == report["attentive_distinct_events"] == 200
    assert report["attentive_events_twice"] == {}
    assert report["drained"], report["jobs_left"]
    # No process was restarted: gunicorn served throughout and the one worker process lived on,
    # having lost the database and started a new procrastinate worker within itself.
    assert report["portal_alive"]
    assert report["worker_starts"] == 1 and report["worker_exits"] == []
    assert report["worker_lost_database"] >= 1
    # Each 503 was logged as one line saying why; nothing in the portal crashed.
    log = (tmp_path / "gunicorn.log").read_text()
    assert "could not record a conversion request, answered 503" in log
    assert "Traceback" not in log
    assert report["exit_status"] == 0, report["output"]


def test_a_database_that_takes_connections_but_never_answers_costs_one_connect_timeout_not_one_per_callback(tmp_path):
    """A server shutting down (or a network black hole) accepts TCP connections and says
    nothing: each try waits the whole connect timeout. After one such wait a web process answers
    503 at once for a second, instead of queueing every callback behind its own wait."""
    import signal
    import socket
    import threading
    import time

    import requests

    black_hole = socket.socket()
    black_hole.bind(("127.0.0.1", 0))
    black_hole.listen(64)
    held: list[socket.socket] = []  # each connection the portal opened, kept open and never answered

    def take_connections():
        while True:
            try:
                held.append(black_hole.accept()[0])
            except OSError:  # closed: the test is over
                return

    threading.Thread(target=take_connections, daemon=True).start()
    port = free_port()
    env = {
        **{key: value for key, value in os.environ.items() if key != "DATABASE_URL"},
        "DATABASE_URL": f"postgres://portal@127.0.0.1:{black_hole.getsockname()[1]}/portal",
        "DATABASE_CONNECT_TIMEOUT": str(CONNECT_TIMEOUT),
        "SECRET_KEY": "outage-test", "DEBUG": "false", "ALLOWED_HOSTS": "127.0.0.1", "SECURE_SSL_REDIRECT": "false",
        "PORT": str(port), "WEB_CONCURRENCY": "1", "CONN_MAX_AGE": "60", "LOG_FORMAT": "plain",
    }
    gunicorn = Path(sys.executable).with_name("gunicorn")
    with open(tmp_path / "gunicorn.log", "wb") as log:
        server = subprocess.Popen([str(gunicorn), "--config", "gunicorn.conf.py"], cwd=ROOT, env=env, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}/hooks/sparkfly/channels/00000000-0000-0000-0000-000000000000/s3cret/conversions"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert server.poll() is None, (tmp_path / "gunicorn.log").read_text()
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "gunicorn did not listen within 60 s"
                time.sleep(0.2)
        timed = []  # (status, Retry-After, seconds, connections the silent server had got by then)
        for _ in range(6):
            started = time.monotonic()
            answer = requests.post(url, params={"credential_id": "1"}, timeout=30)
            timed.append((answer.status_code, answer.headers.get("Retry-After"), time.monotonic() - started, len(held)))
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
        black_hole.close()
        for connection in held:
            connection.close()

    assert all(status == 503 and retry_after == "30" for status, retry_after, _, _ in timed), timed
    assert timed[0][2] >= CONNECT_TIMEOUT - 0.5 and timed[0][3] == 1  # the one wait for the silent server
    # The next callback, sent at once, came within the second's pause: answered without opening a
    # connection (an ordering, not a time), so without the connect timeout's wait.
    assert timed[1][3] == 1, timed
    assert timed[1][2] < CONNECT_TIMEOUT - 0.5, timed
    # Over the six, fewer connections than callbacks: later ones may fall after the pause on a
    # busy machine and wait again, but never all of them.
    assert len(held) < len(timed), timed



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

ROOT = Path(__file__).resolve().parents[2]
CONNECT_TIMEOUT = 2  # DATABASE_CONNECT_TIMEOUT in the script's RECOVERY


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
        tmp_path, "--scenario", "outage", "--callbacks", "150", "--rate", "10", "--outage-seconds", "8",
        "--workers", "1", "--web-workers", "2", "--drain-timeout", "40", timeout=85,
    )
    before, during, after = report["redeemed_before_during_after_outage"]

    # While the server was down, callbacks were refused with 503 + Retry-After, quickly: never a
    # 500, never a hang (the connect timeout bounds the wait).
    assert report["answered_503"] > 0
    assert report["bad_5xx"] == [] and report["callbacks_no_answer"] == 0
    assert report["checks"]["every 503 carried Retry-After"]
    assert report["slowest_503_seconds"] < CONNECT_TIMEOUT + 1
    # Redemptions came before, during and after the outage; every one was accepted once in the end.
    assert before > 0 and during > 0 and after > 0
    assert report["accepted_202"] == report["redemption_rows"] == report["redeemed"] == 150
    # The worker forwarded all of them, each once.
    assert report["deliveries_delivered"] == report["attentive_distinct_events"] == 150
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

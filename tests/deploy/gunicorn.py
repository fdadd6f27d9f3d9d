"""The deployment's gunicorn (``gunicorn.conf.py``, as the Procfile starts it) for tests."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[2]


@contextmanager
def deployed_gunicorn(env: dict, port: int, log_path: Path) -> Iterator[str]:
    """Start gunicorn with ``env`` on ``port``, logging to ``log_path``; yield its base URL once
    /healthz answers (60 s at most); stop it with SIGTERM after."""
    gunicorn = Path(sys.executable).with_name("gunicorn")
    with open(log_path, "wb") as log:
        server = subprocess.Popen(
            [str(gunicorn), "--config", str(ROOT / "gunicorn.conf.py")], cwd=ROOT, env=env, stdout=log, stderr=log
        )
    base = f"http://127.0.0.1:{port}"
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
        yield base
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)

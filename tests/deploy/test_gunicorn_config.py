"""gunicorn.conf.py's default number of web processes: 2 x the CPUs this process may use + 1,
at most 12 (each holds a database connection, and a container may see a big host's CPUs);
WEB_CONCURRENCY overrides it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def workers_with(*, cpus: int, web_concurrency: str = "") -> int:
    """Load the config as gunicorn does, in a child that sees ``cpus`` CPUs (its affinity set,
    as a container's cpuset gives it)."""
    script = (
        "import os, runpy, json, sys;"
        f"os.sched_getaffinity = lambda pid: set(range({cpus}));"
        f"print(json.dumps(runpy.run_path({str(ROOT / 'gunicorn.conf.py')!r})['workers']))"
    )
    env = {**os.environ, "WEB_CONCURRENCY": web_concurrency}
    done = subprocess.run([sys.executable, "-c", script], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_the_default_counts_the_cpus_this_process_may_use():
    quota = Path("/sys/fs/cgroup/cpu.max")
    limited = quota.exists() and quota.read_text().split()[0] != "max"
    assert workers_with(cpus=1) == 3
    if not limited:  # a CPU quota on this machine would lower the next one
        assert workers_with(cpus=4) == 9


def test_a_container_seeing_a_big_hosts_cpus_gets_at_most_twelve():
    assert workers_with(cpus=64) == 12


def test_web_concurrency_overrides_the_default_and_its_cap():
    assert workers_with(cpus=64, web_concurrency="40") == 40


def test_the_app_is_preloaded_and_loading_it_opens_no_connection_and_starts_no_thread():
    """gunicorn forks its workers from a master that loaded the app (a recycled worker answers
    at once); a connection or a thread made while loading would be shared by every fork."""
    script = (
        "import os, runpy, json, threading;"
        f"config = runpy.run_path({str(ROOT / 'gunicorn.conf.py')!r});"
        "os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'portal.settings');"
        "from portal.wsgi import application;"
        "from django.db import connections;"
        "print(json.dumps({'preload': config['preload_app'],"
        " 'connections': [c.alias for c in connections.all() if c.connection is not None],"
        " 'threads': [t.name for t in threading.enumerate()]}))"
    )
    env = {**os.environ, "DEBUG": "true"}
    done = subprocess.run([sys.executable, "-c", script], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {
        "preload": True, "connections": [], "threads": ["MainThread"]
    }

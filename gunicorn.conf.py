"""gunicorn's configuration for the portal (the Procfile's ``web``; read from the working
directory, or pass ``--config gunicorn.conf.py``). Every value can be changed from the environment:

  PORT                      port to listen on, all interfaces (8000)
  WEB_CONCURRENCY           worker processes (2 x cores + 1, gunicorn's documented starting point:
                            a sync worker blocks on each database round trip; at most 12, below)
  GUNICORN_THREADS          threads per worker (1: sync workers; >1 switches to gthread)
  GUNICORN_TIMEOUT          seconds a request may take before its worker is restarted (30)
  GUNICORN_MAX_REQUESTS     requests after which a worker is replaced, plus up to 50 % jitter so
                            workers do not restart together (1000; 0 = never)
  FORWARDED_ALLOW_IPS       addresses of the proxies whose X-Forwarded-* headers are trusted
                            (127.0.0.1,::1; the load balancer's addresses in production, or *
                            when only the balancer can reach the portal)

Each worker keeps a database connection per thread for CONN_MAX_AGE seconds (set 60 here), so
the web processes' count is a share of PostgreSQL's max_connections (README "Database
connections"). "Cores" are the CPUs this process may run on, lowered by a container's CPU quota
(cgroup v2); a container without one (or on cgroup v1) sees the host's CPUs, 64 on a big host,
so the default is capped: set WEB_CONCURRENCY to go past the cap.
The access log goes to stdout, the error log to stderr (as the portal's own lines), with every
conversion callback's secret masked (portal/logs.py).
With LOG_FORMAT=json (the default unless DEBUG, as in the settings) gunicorn's access and error
lines are JSON objects like the portal's own, the access line with the request id the portal
echoed in X-Request-ID.
"""

import math
import os
import sys
from pathlib import Path

import environ
from gunicorn.glogging import Logger

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
from portal.log_context import REQUEST_ID_HEADER  # noqa: E402 — needs the project on sys.path
from portal.logs import JsonLines, RedactCallbackSecrets  # noqa: E402

environ.Env.read_env(ROOT / ".env", overwrite=False)  # as the settings do: the environment wins


def _int(name: str, default: int) -> int:
    raw = os.environ.get(name, "")
    return int(raw) if raw else default


def _cores() -> int:
    """CPUs this process may use: its affinity set (a container's cpuset), lowered by a cgroup v2
    CPU quota (a container's --cpus), which neither os.cpu_count() nor the affinity reflects."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if quota != "max":
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return cores


# The default's ceiling: 12 processes = 12 connections per web machine.
DEFAULT_WORKERS_CAP = 12


def _json_logs() -> bool:
    debug = os.environ.get("DEBUG", "").strip().lower() in {"true", "1", "yes", "on"}
    return (os.environ.get("LOG_FORMAT") or ("plain" if debug else "json")) == "json"


class RedactingLogger(Logger):
    """gunicorn's logger, with the callback secret masked in access and error lines alike, and
    JSON lines when LOG_FORMAT=json."""

    def setup(self, cfg):
        super().setup(cfg)
        for log in (self.access_log, self.error_log):
            log.addFilter(RedactCallbackSecrets())
            if _json_logs():
                for handler in log.handlers:
                    handler.setFormatter(JsonLines())

    def access(self, resp, req, environ, request_time):
        if not _json_logs():
            return super().access(resp, req, environ, request_time)
        if not self.access_log_enabled:
            return
        atoms = self.atoms(resp, req, environ, request_time)
        fields = {
            "remote_addr": atoms["h"],
            "forwarded_for": atoms.get("{x-forwarded-for}i"),
            "method": atoms["m"],
            "path": environ.get("RAW_URI") or atoms["U"],
            "status": int(atoms["s"]) if str(atoms["s"]).isdigit() else atoms["s"],
            "bytes": atoms["B"],
            "duration_ms": round(request_time.total_seconds() * 1000, 1),
            "referer": atoms["f"],
            "user_agent": atoms["a"],
            "request_id": atoms.get("{%s}o" % REQUEST_ID_HEADER.lower()),
        }
        self.access_log.info("%s %s %s", fields["method"], fields["path"], fields["status"], extra=fields)


wsgi_app = "portal.wsgi:application"
bind = [f"0.0.0.0:{_int('PORT', 8000)}"]
workers = _int("WEB_CONCURRENCY", min(2 * _cores() + 1, DEFAULT_WORKERS_CAP))
threads = _int("GUNICORN_THREADS", 1)
timeout = _int("GUNICORN_TIMEOUT", 30)
graceful_timeout = timeout
keepalive = 5  # longer than nothing, shorter than a load balancer's idle timeout (60 s on most)
max_requests = _int("GUNICORN_MAX_REQUESTS", 1000)
# Spread wide: processes sharing the load evenly reach the limit together, and all of them
# restarting at once left none to answer (the chaos run: 35 callbacks past Sparkfly's 5 s).
max_requests_jitter = max_requests // 2
# The app is loaded once in the master and each worker forked from it, so a recycled worker
# answers within milliseconds instead of importing Django for seconds on a busy machine. Safe
# because loading it opens no database connection and starts no thread (tests/deploy/
# test_gunicorn_config.py); deploys restart the processes, so nothing relies on a reload.
preload_app = True
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS") or "127.0.0.1,::1"
# Worker heartbeats on tmpfs: a container's overlay disk can stall them into false timeouts.
worker_tmp_dir = "/dev/shm" if os.path.isdir("/dev/shm") else None

logger_class = RedactingLogger
accesslog = "-"
errorlog = "-"
# gunicorn's combined format plus the time taken (ms) and the load balancer's client address.
access_log_format = '%(h)s %({x-forwarded-for}i)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s" %(M)sms'

"""gunicorn's configuration for the portal (the Procfile's ``web``; read from the working
directory, or pass ``--config gunicorn.conf.py``). Every value can be changed from the environment:

  PORT                      port to listen on, all interfaces (8000)
  WEB_CONCURRENCY           worker processes (2 x cores + 1, gunicorn's documented starting point:
                            a sync worker blocks on each database round trip)
  GUNICORN_THREADS          threads per worker (1: sync workers; >1 switches to gthread)
  GUNICORN_TIMEOUT          seconds a request may take before its worker is restarted (30)
  GUNICORN_MAX_REQUESTS     requests after which a worker is replaced, plus up to 10 % jitter so
                            workers do not restart together (1000; 0 = never)
  FORWARDED_ALLOW_IPS       addresses of the proxies whose X-Forwarded-* headers are trusted
                            (127.0.0.1,::1; the load balancer's addresses in production, or *
                            when only the balancer can reach the portal)

Each worker keeps a database connection per thread for CONN_MAX_AGE seconds (set 60 here).
The access log goes to stdout with every conversion callback's secret masked (portal/logs.py).
With LOG_FORMAT=json (the default unless DEBUG, as in the settings) gunicorn's access and error
lines are JSON objects like the portal's own, the access line with the request id the portal
echoed in X-Request-ID.
"""

import multiprocessing
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
workers = _int("WEB_CONCURRENCY", 2 * multiprocessing.cpu_count() + 1)
threads = _int("GUNICORN_THREADS", 1)
timeout = _int("GUNICORN_TIMEOUT", 30)
graceful_timeout = timeout
keepalive = 5  # longer than nothing, shorter than a load balancer's idle timeout (60 s on most)
max_requests = _int("GUNICORN_MAX_REQUESTS", 1000)
max_requests_jitter = max_requests // 10
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS") or "127.0.0.1,::1"
# Worker heartbeats on tmpfs: a container's overlay disk can stall them into false timeouts.
worker_tmp_dir = "/dev/shm" if os.path.isdir("/dev/shm") else None

logger_class = RedactingLogger
accesslog = "-"
errorlog = "-"
# gunicorn's combined format plus the time taken (ms) and the load balancer's client address.
access_log_format = '%(h)s %({x-forwarded-for}i)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s" %(M)sms'

"""Settings of the portal, read from the environment or a ``.env`` file (django-environ).

Every variable is documented in ``.env.example``. Production sets ``DATABASE_URL``; without it
the portal starts an embedded PostgreSQL under ``.data/`` (see ``portal/embedded_db.py``).
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent

environ.Env.read_env(BASE_DIR / ".env", overwrite=False)


_CASTS = {"str": str, "int": int, "float": float, "bool": bool, "list": list}


def _read(cast: str, name: str, default):
    """One variable, cast; an empty value means the default; a bad value names itself.

    The raw value is cast with django-environ's parser but not through ``env()``, which would
    treat a value starting with "$" as the name of another variable (a generated SECRET_KEY or
    API key can start with "$" and would silently become empty).
    """
    raw = os.environ.get(name, "")
    if not raw:
        return default
    if cast == "bool" and raw.strip().lower() not in {"true", "false", "1", "0", "yes", "no", "on", "off"}:
        raise ImproperlyConfigured(f"{name}={raw!r} is not a valid bool: use true or false")
    try:
        return environ.Env.parse_value(raw, _CASTS[cast])
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name}={raw!r} is not a valid {cast}: {exc}") from None


DEBUG = _read("bool", "DEBUG", False)
SECRET_KEY = _read("str", "SECRET_KEY", "")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured(
            "SECRET_KEY is not set. Set it in the environment or in .env "
            "(or set DEBUG=true for a local run with a throwaway key)."
        )
    SECRET_KEY = "insecure-local-development-key-do-not-use-in-production"
ALLOWED_HOSTS = _read("list", "ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"])

# --- HTTPS and browser security (`manage.py check --deploy` passes with DEBUG off) --------------
# TLS ends at the load balancer or proxy. Set SECURE_PROXY_SSL_HEADER=X-Forwarded-Proto only
# behind a proxy that sets that header itself (overwriting what a client sent): Django then
# trusts it to say the original request was https. Anywhere else a client could forge it.
_proxy_ssl_header = _read("str", "SECURE_PROXY_SSL_HEADER", "")
SECURE_PROXY_SSL_HEADER = (
    ("HTTP_" + _proxy_ssl_header.upper().replace("-", "_"), "https") if _proxy_ssl_header else None
)
# http → https redirects, on unless DEBUG; /metrics is scraped over plain http (and /healthz,
# answered before this redirect: portal/health.py).
SECURE_SSL_REDIRECT = _read("bool", "SECURE_SSL_REDIRECT", not DEBUG)
SECURE_REDIRECT_EXEMPT = [r"^metrics$"]
# Session and CSRF cookies only over https; follows SECURE_SSL_REDIRECT unless set.
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = _read("bool", "SECURE_COOKIES", SECURE_SSL_REDIRECT)
CSRF_TRUSTED_ORIGINS = _read("list", "CSRF_TRUSTED_ORIGINS", [])
# Strict-Transport-Security (sent on https answers only): a year unless DEBUG.
SECURE_HSTS_SECONDS = _read("int", "SECURE_HSTS_SECONDS", 0 if DEBUG else 31_536_000)
SECURE_HSTS_INCLUDE_SUBDOMAINS = _read("bool", "SECURE_HSTS_INCLUDE_SUBDOMAINS", True)
SECURE_HSTS_PRELOAD = _read("bool", "SECURE_HSTS_PRELOAD", True)
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
# Content-Security-Policy (django-csp): only this origin's files; no inline script anywhere (the
# pages pass data with json_script and load static JS). Exceptions, each scoped to its pages:
# inline styles in the admin (portal/security.py) and on the API docs page (portal/urls.py).
# Pico CSS draws its form icons as data: SVGs.
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": ["'self'"],
        "script-src": ["'self'"],
        "style-src": ["'self'"],
        "img-src": ["'self'", "data:"],
        "object-src": ["'none'"],
        "base-uri": ["'self'"],
        "form-action": ["'self'"],
        "frame-ancestors": ["'none'"],
    }
}

# --- Login throttling (django-axes) --------------------------------------------------------------
# LOGIN_FAILURE_LIMIT failed logins of one username from one address lock that pair out of the
# admin and the portal for LOGIN_LOCKOUT_MINUTES; a success clears the count.
# `manage.py axes_reset` (or axes_reset_username NAME / axes_reset_ip ADDRESS) lifts lockouts.
AUTHENTICATION_BACKENDS = ["portal.security.LockoutBackend", "django.contrib.auth.backends.ModelBackend"]
AXES_FAILURE_LIMIT = _read("int", "LOGIN_FAILURE_LIMIT", 5)
AXES_COOLOFF_TIME = timedelta(minutes=_read("float", "LOGIN_LOCKOUT_MINUTES", 15.0))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_TEMPLATE = "axes/locked_out.html"
AXES_CLIENT_IP_CALLABLE = "portal.security.client_ip"
# Proxies in front of the portal that append to X-Forwarded-For (0: clients connect directly).
TRUSTED_PROXY_COUNT = _read("int", "TRUSTED_PROXY_COUNT", 0)
# Two-factor (django-otp, TOTP): when true the admin also asks staff for an authenticator code;
# staff enroll on the portal's Two-factor page. Off by default.
REQUIRE_STAFF_2FA = _read("bool", "REQUIRE_STAFF_2FA", False)
OTP_TOTP_ISSUER = "Loyalty portal"

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.postgres",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "procrastinate.contrib.django",
    "csp",
    "axes",
    "django_otp",
    "django_otp.plugins.otp_totp",
    "portal",
    "sparkfly_sync",
    "attentive_sync",
]

MIDDLEWARE = [
    # First: every line logged while serving a request carries its id (portal/log_context.py).
    "portal.log_context.RequestIdMiddleware",
    # Next: answers /healthz before any Host validation (load balancers check nodes by IP).
    "portal.health.HealthCheckMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "portal.security.PortalCSPMiddleware",
    # Serves static/ itself (compressed, cached), so the portal needs no web server or CDN.
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django_otp.middleware.OTPMiddleware",  # request.user.is_verified(): two-factor (portal/two_factor.py)
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last, as django-axes requires: turns a locked-out login into the lockout page.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "portal.urls"
WSGI_APPLICATION = "portal.wsgi.application"
ASGI_APPLICATION = "portal.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "portal.alerts.alert_banner",  # the operational alert's banner, on every page
            ],
        },
    },
]

# --- Database -------------------------------------------------------------------------------
# Local state of a developer's machine: the embedded PostgreSQL and the demo admin's login.
DATA_DIR = Path(_read("str", "DATA_DIR", str(BASE_DIR / ".data")))
EMBEDDED_DB_DIR = DATA_DIR / "postgres"
if _read("str", "DATABASE_URL", ""):
    DATABASES = {"default": environ.Env.db_url_config(os.environ["DATABASE_URL"])}
    if not DATABASES["default"].get("ENGINE"):
        raise ImproperlyConfigured("DATABASE_URL is not a database URL (like postgres://user:password@host:5432/name)")
else:
    from portal.embedded_db import database_settings

    DATABASES = {"default": database_settings(EMBEDDED_DB_DIR)}
# Seconds a connection is kept across requests. Production under gunicorn should set 60:
# opening one per request costs more than the webhook's own work (ingest measured 294 vs
# 134 requests/s). 0 stays the default for `make run` (its development server's threads each
# hold one). Health checks replace a connection the database dropped (a restart, a failover)
# instead of failing a request on it.
DATABASES["default"].setdefault("CONN_MAX_AGE", _read("int", "CONN_MAX_AGE", 0))
DATABASES["default"].setdefault("CONN_HEALTH_CHECKS", True)
# Seconds to wait for PostgreSQL to accept a connection: an unreachable database (a restart, a
# failover, a lost network) then costs a webhook this long before its 503, never a hang.
DATABASES["default"].setdefault("OPTIONS", {}).setdefault(
    "connect_timeout", _read("int", "DATABASE_CONNECT_TIMEOUT", 5)
)
# Seconds after which an open connection whose server went silent (a cut network, a failover
# that left the socket half-open) is given up: TCP keepalives probe it while it waits for an
# answer, and tcp_user_timeout bounds data the server never acknowledged. Without them a query
# on such a connection waits for the kernel's retransmissions (about 15 minutes), far past
# gunicorn's timeout. libpq sets them on TCP connections (a Unix socket, as the embedded
# server's, has no such failure); Django's and procrastinate's connections (the worker's pool
# is made from these OPTIONS) all carry them; a value in DATABASE_URL's query wins.
DATABASE_DEAD_CONNECTION_SECONDS = _read("int", "DATABASE_DEAD_CONNECTION_SECONDS", 10)
if DATABASE_DEAD_CONNECTION_SECONDS < 1:
    raise ImproperlyConfigured(f"DATABASE_DEAD_CONNECTION_SECONDS={DATABASE_DEAD_CONNECTION_SECONDS} must be 1 or more")
_keepalive_interval = max(1, DATABASE_DEAD_CONNECTION_SECONDS // 5)
for _option, _value in {
    "keepalives": 1,
    # Silence for this long, then 3 probes this far apart: DATABASE_DEAD_CONNECTION_SECONDS in all.
    "keepalives_idle": max(1, DATABASE_DEAD_CONNECTION_SECONDS - 3 * _keepalive_interval),
    "keepalives_interval": _keepalive_interval,
    "keepalives_count": 3,
    "tcp_user_timeout": DATABASE_DEAD_CONNECTION_SECONDS * 1000,  # milliseconds
}.items():
    DATABASES["default"]["OPTIONS"].setdefault(_option, _value)
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
# The program's time zone: the dashboard's days start at its midnight.
TIME_ZONE = _read("str", "TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = BASE_DIR / "staticfiles"
# whitenoise finds files where they live (no collectstatic needed to run); `collectstatic`
# adds the pre-compressed copies it then serves. The vendored assets' folders carry their
# versions, so a long cache never serves a stale library.
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
WHITENOISE_USE_FINDERS = True

# --- Portal pages and accounts ------------------------------------------------------------------
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "dashboard"
LOGOUT_REDIRECT_URL = "login"
# Password reset mails: printed to the console unless an SMTP server is configured
# (EMAIL_URL=smtp+tls://user:password@host:587).
if _read("str", "EMAIL_URL", ""):
    globals().update(environ.Env.email_url_config(os.environ["EMAIL_URL"]))
else:
    EMAIL_BACKEND = "django.core.mail.backends.console.EmailBackend"
DEFAULT_FROM_EMAIL = _read("str", "DEFAULT_FROM_EMAIL", "portal@localhost")

# The only API is the Sparkfly webhooks, which authenticate by their URL or signature.
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [],
    "DEFAULT_PERMISSION_CLASSES": [],
    "UNAUTHENTICATED_USER": None,
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Sparkfly ↔ Attentive portal: Sparkfly webhooks",
    "DESCRIPTION": (
        "The endpoints Sparkfly calls: channel conversion callbacks (one per redemption) and "
        "signed event notifications. Each request is recorded before it is answered."
    ),
    "VERSION": "1.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "REDOC_DIST": "SIDECAR",
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
}

# --- Sparkfly ---------------------------------------------------------------------------------
SPARKFLY_PRODUCTION_URL = "https://api.sparkfly.com"
SPARKFLY_STAGING_URL = "https://api-staging.sparkfly.com"
SPARKFLY_API_URL = _read("str", "SPARKFLY_API_URL", "")
SPARKFLY_IDENTITY = _read("str", "SPARKFLY_IDENTITY", "")
SPARKFLY_KEY = _read("str", "SPARKFLY_KEY", "")
# Seconds to wait for a connection and for each response from Sparkfly.
SPARKFLY_CONNECT_TIMEOUT = _read("float", "SPARKFLY_CONNECT_TIMEOUT", 5.0)
SPARKFLY_READ_TIMEOUT = _read("float", "SPARKFLY_READ_TIMEOUT", 60.0)
# Page size of list calls; Sparkfly allows up to 10000 members per page.
SPARKFLY_PAGE_SIZE = _read("int", "SPARKFLY_PAGE_SIZE", 5000)
# Minutes between two full mirror syncs run by the worker (0 turns the periodic sync off).
SPARKFLY_SYNC_INTERVAL_MINUTES = _read("int", "SPARKFLY_SYNC_INTERVAL_MINUTES", 60)
# Default country of member phone numbers that Sparkfly gives without a country code.
MEMBER_PHONE_REGION = _read("str", "MEMBER_PHONE_REGION", "US")

# The portal's address as Sparkfly reaches it: the base of the callback URLs given to Sparkfly.
PORTAL_PUBLIC_URL = _read("str", "PORTAL_PUBLIC_URL", "http://127.0.0.1:8000").rstrip("/")
# Hours a replaced callback secret (or signing key) is still accepted after a rotation.
SPARKFLY_CALLBACK_SECRET_GRACE_HOURS = _read("float", "SPARKFLY_CALLBACK_SECRET_GRACE_HOURS", 24.0)

# --- Retention (README "Retention"): a nightly job deletes, in short batches, ------------------
# webhook requests (raw bodies), delivered deliveries (with their attempts) and finished jobs
# older than RETENTION_DAYS (0: keep everything); dead and expired deliveries and failed jobs
# after RETENTION_FAILED_DAYS (they are what someone investigates); mirror sync runs beyond the
# newest RETENTION_SYNC_RUNS per resource. Redemptions and notifications (the dedup keys) are
# kept for good.
RETENTION_DAYS = _read("int", "RETENTION_DAYS", 30)
RETENTION_FAILED_DAYS = max(_read("int", "RETENTION_FAILED_DAYS", 90), RETENTION_DAYS)
RETENTION_SYNC_RUNS = _read("int", "RETENTION_SYNC_RUNS", 100)

# --- Attentive ----------------------------------------------------------------------------------
# The retry schedule of deliveries: try n waits uniform(0, min(cap, base * 2**(n-1))) seconds.
# (Which events are sent, the API key and the rate limit live in the admin's Attentive settings.)
ATTENTIVE_RETRY_BASE_SECONDS = _read("float", "ATTENTIVE_RETRY_BASE_SECONDS", 2.0)
ATTENTIVE_RETRY_CAP_SECONDS = _read("float", "ATTENTIVE_RETRY_CAP_SECONDS", 900.0)
ATTENTIVE_TEXT_SEND_ENABLED = _read("bool", "ATTENTIVE_TEXT_SEND_ENABLED", False)  # the key may POST /v1/text/send

# --- Outbound HTTP (README "Outbound HTTP"; portal/outbound.py) -------------------------------
# Each API key goes only to its own API's hosts, over https: an administrator who points the
# Attentive URL elsewhere gets a refusal, not the key at their host. The defaults are the hosts
# reference/attentive-api.md and reference/sparkfly-api.md give. Loopback (the sandboxes, plain
# http allowed) only when OUTBOUND_ALLOW_LOOPBACK is on: by default with DEBUG (`make run`).
ATTENTIVE_ALLOWED_HOSTS = _read("list", "ATTENTIVE_ALLOWED_HOSTS", ["api.attentivemobile.com"])
SPARKFLY_ALLOWED_HOSTS = _read("list", "SPARKFLY_ALLOWED_HOSTS", ["api.sparkfly.com", "api-staging.sparkfly.com"])
OUTBOUND_ALLOW_LOOPBACK = _read("bool", "OUTBOUND_ALLOW_LOOPBACK", DEBUG)
from portal.outbound import refusal as _outbound_refusal  # noqa: E402 — plain Python, no Django import

if SPARKFLY_API_URL and (
    _refused := _outbound_refusal(
        SPARKFLY_API_URL, allowed_hosts=SPARKFLY_ALLOWED_HOSTS, allow_loopback=OUTBOUND_ALLOW_LOOPBACK,
        service="Sparkfly", setting="SPARKFLY_ALLOWED_HOSTS",
    )
):
    raise ImproperlyConfigured(f"SPARKFLY_API_URL is refused: {_refused}")

# --- Secrets at rest -------------------------------------------------------------------------
# django-fernet-encrypted-fields derives its keys from SECRET_KEY (+ SECRET_KEY_FALLBACKS) and
# these salts. Rotate by putting the new value first and keeping the old ones after it, then
# `manage.py attentive_settings --reencrypt`.
SECRET_KEY_FALLBACKS = _read("list", "SECRET_KEY_FALLBACKS", [])
SALT_KEY = _read("list", "FIELD_ENCRYPTION_SALTS", ["sparkfly-attentive-portal"])

# --- Health -----------------------------------------------------------------------------------
# /healthz?full (monitoring's check) answers 503 when no worker heartbeat is newer than this.
WORKER_HEARTBEAT_MAX_AGE_SECONDS = _read("int", "WORKER_HEARTBEAT_MAX_AGE_SECONDS", 60)

# --- Recovery (README "Failure behaviour") -----------------------------------------------------
# Production keeps the defaults; tests and the chaos benchmark shorten them to see a killed
# worker's work finished in seconds. A worker silent for WORKER_STALLED_AFTER_SECONDS is dead
# (it beats every sixth of that): its jobs are queued again. A batch of deliveries is its
# sender's for ATTENTIVE_SEND_LEASE_SECONDS, then sent again by another job (no send leaves in
# the last 2 x ATTENTIVE_TIMEOUT_SECONDS of it). The stalled-job retry and the delivery sweep
# run every MAINTENANCE_INTERVAL_SECONDS (a divisor of 60, or 60).
WORKER_STALLED_AFTER_SECONDS = _read("int", "WORKER_STALLED_AFTER_SECONDS", 60)
ATTENTIVE_TIMEOUT_SECONDS = _read("float", "ATTENTIVE_TIMEOUT_SECONDS", 10.0)
ATTENTIVE_SEND_LEASE_SECONDS = _read("int", "ATTENTIVE_SEND_LEASE_SECONDS", 120)
MAINTENANCE_INTERVAL_SECONDS = _read("int", "MAINTENANCE_INTERVAL_SECONDS", 60)
if 60 % MAINTENANCE_INTERVAL_SECONDS:
    raise ImproperlyConfigured(f"MAINTENANCE_INTERVAL_SECONDS={MAINTENANCE_INTERVAL_SECONDS} does not divide 60")
if ATTENTIVE_SEND_LEASE_SECONDS < 3 * ATTENTIVE_TIMEOUT_SECONDS:
    raise ImproperlyConfigured("ATTENTIVE_SEND_LEASE_SECONDS must be at least 3 x ATTENTIVE_TIMEOUT_SECONDS")

# --- Observability (README "Observability") ---------------------------------------------------
# /metrics answers loopback callers, and others that send "Authorization: Bearer <METRICS_TOKEN>"
# (unset: loopback only); anyone else gets 403.
METRICS_TOKEN = _read("str", "METRICS_TOKEN", "")
# The alert (portal/alerts.py, checked every minute) fires on this many failed delivery tries in a
# row, on any delivery gone dead in the last ALERT_DEAD_LETTER_MINUTES, and when the oldest job
# due or the oldest delivery not yet through is older than ALERT_BACKLOG_MINUTES.
ALERT_FAILED_ATTEMPTS = _read("int", "ALERT_FAILED_ATTEMPTS", 5)
ALERT_DEAD_LETTER_MINUTES = _read("int", "ALERT_DEAD_LETTER_MINUTES", 60)
ALERT_BACKLOG_MINUTES = _read("int", "ALERT_BACKLOG_MINUTES", 15)
# The worker binds each job's id and id arguments to its log lines (portal/log_context.py).
from portal.log_context import job_ids_middleware  # noqa: E402 — plain Python, no Django import

PROCRASTINATE_WORKER_DEFAULTS = {"worker_middleware": [job_ids_middleware]}

# json: one JSON object per line (time, level, logger, message, request/job/delivery ids), for
# log collectors; plain: text for a terminal. json unless DEBUG (`make run` is plain).
LOG_FORMAT = _read("str", "LOG_FORMAT", "plain" if DEBUG else "json")
if LOG_FORMAT not in {"json", "plain"}:
    raise ImproperlyConfigured(f"LOG_FORMAT={LOG_FORMAT!r} is not json or plain")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"},
        "json": {"()": "portal.logs.JsonLines"},
    },
    "filters": {
        "redact_secrets": {"()": "portal.logs.RedactCallbackSecrets"},
        "ids": {"()": "portal.log_context.IdsOnRecords"},
    },
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": LOG_FORMAT, "filters": ["redact_secrets", "ids"]}
    },
    "root": {"handlers": ["console"], "level": _read("str", "LOG_LEVEL", "INFO")},
    "loggers": {
        # Django's own handlers would print request lines (with callback secrets) unfiltered.
        "django": {"handlers": ["console"], "level": "INFO", "propagate": False},
        "django.server": {"handlers": ["console"], "level": "INFO", "propagate": False},
        "pgserver": {"level": "WARNING"},
        "procrastinate": {"level": "WARNING"},
        "axes": {"level": "WARNING"},  # failed and locked-out logins; not its start-up banner
    },
}

"""Embedded PostgreSQL for laptops and CI, used when ``DATABASE_URL`` is unset.

The ``pgserver`` package ships a real PostgreSQL server in a wheel, so a fresh clone needs no
database install and runs the same engine and SQL as production (ON CONFLICT, SKIP LOCKED,
LISTEN/NOTIFY). The cluster lives under ``.data/postgres`` and keeps running between commands
(``cleanup_mode=None``), so the data survives restarts and every ``manage.py`` call connects
in milliseconds instead of booting a server. ``python manage.py embedded_db stop`` stops it.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from urllib.parse import parse_qs, urlparse

DATABASE_NAME = "portal"
SUPERUSER = "postgres"

logger = logging.getLogger(__name__)


def _server(data_dir: Path):
    data_dir.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset (CI, containers); /tmp is fine here.
        warnings.simplefilter("ignore")
        # Imported here: production settings (DATABASE_URL set) never load pgserver.
        import pgserver

        return pgserver.get_server(data_dir, cleanup_mode=None)


def _socket_dir(server) -> str:
    return parse_qs(urlparse(server.get_uri()).query)["host"][0]


def _ensure_database(socket_dir: str) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(host=socket_dir, user=SUPERUSER, dbname="postgres", autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [DATABASE_NAME]).fetchone()
        if not exists:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DATABASE_NAME)))
            logger.info("created database %s in the embedded PostgreSQL", DATABASE_NAME)


def database_settings(data_dir: Path) -> dict:
    """Start (or reuse) the embedded server and return a Django ``DATABASES`` entry for it."""
    server = _server(data_dir)
    socket_dir = _socket_dir(server)
    _ensure_database(socket_dir)
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": DATABASE_NAME,
        "USER": SUPERUSER,
        "HOST": socket_dir,
        "PORT": "",
    }


def stop(data_dir: Path) -> bool:
    """Stop the embedded server if it runs; return whether one was running."""
    if not (data_dir / "postmaster.pid").exists():
        return False
    from pgserver._commands import pg_ctl

    # As root, pgserver runs the cluster as its own "pgserver" system user; pg_ctl must too.
    user = "pgserver" if hasattr(os, "geteuid") and os.geteuid() == 0 else None
    pg_ctl(["stop", "-m", "fast"], pgdata=data_dir, user=user)
    return True

"""A Django database's settings as a DATABASE_URL, for child processes (workers, commands)
that must use the same database: tests and benchmarks start real ones."""

from __future__ import annotations

from urllib.parse import quote, urlencode


def database_url(settings_dict: dict, *, application_name: str = "") -> str:
    """The URL for ``settings_dict``, whatever the server: a Unix-socket directory (as the
    embedded PostgreSQL uses) goes in the query as libpq's ``host``; a TCP host keeps its port;
    a password is kept. ``application_name`` tags the child's sessions in pg_stat_activity."""
    user = quote(settings_dict.get("USER") or "", safe="")
    password = f":{quote(settings_dict['PASSWORD'], safe='')}" if settings_dict.get("PASSWORD") else ""
    host = settings_dict.get("HOST") or ""
    query = {"application_name": application_name} if application_name else {}
    if host.startswith("/"):
        query["host"] = host
        netloc = f"{user}{password}@"
    else:
        port = f":{settings_dict['PORT']}" if settings_dict.get("PORT") else ""
        netloc = f"{user}{password}@{host}{port}"
    url = f"postgres://{netloc}/{quote(settings_dict['NAME'], safe='')}"
    return f"{url}?{urlencode(query)}" if query else url

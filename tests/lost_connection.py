"""A database connection lost at one exact statement, for tests of what the portal does then.

A trigger ends its own session (``pg_terminate_backend(pg_backend_pid())``) on the first
``times`` matching INSERTs: the client sees its connection die mid-statement, as in a restart or
a failover, at exactly that statement and on whichever connection runs it (the web request's,
a job's), with nothing of the portal's code replaced. The count is kept in a sequence, which
the dying transaction's rollback does not undo.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from django.db import connection

_OBJECTS = "test_lost_connection"


@contextmanager
def connection_lost_on_insert(table: str, *, when: str, times: int = 1) -> Iterator[None]:
    """End the session of each of the next ``times`` INSERTs into ``table`` for which ``when``
    (SQL over ``NEW``) holds. Needs a transactional test (``django_db(transaction=True)``): the
    trigger must be committed to fire on other statements' connections. Removed on exit, on a
    fresh connection (the test's own may be the one that died)."""
    with connection.cursor() as cursor:
        cursor.execute(f"CREATE SEQUENCE {_OBJECTS}_count")
        cursor.execute(
            f"""CREATE FUNCTION {_OBJECTS}() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF nextval('{_OBJECTS}_count') <= {int(times)} THEN
                    PERFORM pg_terminate_backend(pg_backend_pid());
                END IF;
                RETURN NEW;
            END $$"""
        )
        cursor.execute(
            f"CREATE TRIGGER {_OBJECTS} BEFORE INSERT ON {table} FOR EACH ROW WHEN ({when}) EXECUTE FUNCTION {_OBJECTS}()"
        )
    try:
        yield
    finally:
        connection.close()
        with connection.cursor() as cursor:
            cursor.execute(f"DROP TRIGGER {_OBJECTS} ON {table}")
            cursor.execute(f"DROP FUNCTION {_OBJECTS}()")
            cursor.execute(f"DROP SEQUENCE {_OBJECTS}_count")


def matching_inserts() -> int:
    """How many matching INSERTs were tried so far (the first ``times`` ended their session)."""
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT last_value, is_called FROM {_OBJECTS}_count")
        last_value, is_called = cursor.fetchone()
    return last_value if is_called else 0

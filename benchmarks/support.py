"""What both benchmarks need: a free loopback port, a scratch database, and the table."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def scratch_database() -> Iterator[None]:
    """A fresh, migrated database of this process's own for the benchmark's duration (so a
    concurrent `make test` keeps its test database), dropped afterwards."""
    from django.db import connection

    connection.settings_dict.setdefault("TEST", {})["NAME"] = f"bench_{os.getpid()}"
    name = connection.creation.create_test_db(verbosity=0, autoclobber=True, keepdb=False)
    try:
        yield
    finally:
        connection.creation.destroy_test_db(name, verbosity=0)


def print_table(title: str, rows: list[tuple[str, str, str]]) -> None:
    width = max(len(row[0]) for row in rows)
    value_width = max(len(row[1]) for row in rows)
    print(f"\n{title}\n")
    print(f"{'measure':<{width}}  {'result':<{value_width}}  goal")
    print(f"{'-' * width}  {'-' * value_width}  ----")
    for name, value, goal in rows:
        print(f"{name:<{width}}  {value:<{value_width}}  {goal}")

"""A rate limiter shared by every worker on every machine, kept in PostgreSQL.

It is GCRA (the "generic cell rate algorithm"): the state is one timestamp per key, the
*theoretical arrival time* (TAT) of the next request if requests came exactly one interval
apart. Reserving a slot is one atomic upsert that pushes the TAT one interval further and
returns how long the caller must wait before sending. Workers therefore never race or retry:
PostgreSQL's row lock orders them, and each sleeps until its own slot. The database's clock
is the only clock, so machines with drifting clocks still share one budget.
"""

from __future__ import annotations

import hashlib

from django.db import connection

from attentive_sync.models import RateLimitState

_RESERVE = f"""
INSERT INTO {RateLimitState._meta.db_table} AS state (key, theoretical_arrival)
VALUES (%(key)s, clock_timestamp() + %(interval)s * interval '1 second')
ON CONFLICT (key) DO UPDATE
SET theoretical_arrival = GREATEST(state.theoretical_arrival, clock_timestamp()) + %(interval)s * interval '1 second'
RETURNING
    EXTRACT(EPOCH FROM theoretical_arrival)::float8 - %(interval)s,
    GREATEST(0, EXTRACT(EPOCH FROM theoretical_arrival - clock_timestamp()) - %(interval)s * %(burst)s)::float8
"""


def limiter_key(api_key: str, endpoint: str) -> str:
    """Attentive limits per token and per endpoint; the key is a digest, never the token."""
    digest = hashlib.sha256(api_key.encode()).hexdigest()[:16]
    return f"attentive:{digest}:{endpoint}"


_RESERVE_MANY = f"""
INSERT INTO {RateLimitState._meta.db_table} AS state (key, theoretical_arrival)
VALUES (%(key)s, clock_timestamp() + %(span)s * interval '1 second')
ON CONFLICT (key) DO UPDATE
SET theoretical_arrival = GREATEST(state.theoretical_arrival, clock_timestamp()) + %(span)s * interval '1 second'
RETURNING EXTRACT(EPOCH FROM theoretical_arrival - clock_timestamp())::float8 - %(span)s
"""


def reserve_many(key: str, count: int, *, per_second: float) -> list[float]:
    """Reserve ``count`` consecutive slots in one statement (a batch of sends); return the
    seconds to wait before each. Same rules as ``reserve``: outside any transaction."""
    if connection.in_atomic_block:
        raise RuntimeError("reserve_many() must not run inside a transaction: it would serialise every worker")
    interval = 1.0 / per_second
    with connection.cursor() as cursor:
        cursor.execute(_RESERVE_MANY, {"key": key, "span": interval * count})
        (first,) = cursor.fetchone()
    return [max(0.0, first + index * interval) for index in range(count)]


def reserve(key: str, *, per_second: float, burst: int = 1) -> float:
    """Reserve the next request slot under ``key``; return the seconds to wait before sending."""
    return reserve_slot(key, per_second=per_second, burst=burst)[1]


def reserve_slot(key: str, *, per_second: float, burst: int = 1) -> tuple[float, float]:
    """Reserve the next slot; return (its place on the limiter's timeline in epoch seconds,
    the seconds to wait before sending).

    ``burst`` requests may go back to back after a quiet spell; 1 spaces every request evenly,
    which keeps any one-second window at or under ``per_second``.

    Runs in autocommit (outside any transaction) so the row lock is held for one statement,
    not for the caller's whole transaction.
    """
    if connection.in_atomic_block:
        raise RuntimeError("reserve() must not run inside a transaction: it would serialise every worker")
    interval = 1.0 / per_second
    with connection.cursor() as cursor:
        cursor.execute(_RESERVE, {"key": key, "interval": interval, "burst": burst})
        slot, wait = cursor.fetchone()
    return slot, wait

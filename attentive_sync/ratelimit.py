"""A rate limiter shared by every worker on every machine, kept in PostgreSQL.

It is GCRA (the "generic cell rate algorithm"): the state is one timestamp per key, the
*theoretical arrival time* (TAT) of the next request if requests came exactly one interval
apart. Reserving a batch's slots is one atomic upsert that pushes the TAT that many intervals
further and returns how long the caller must wait before each. Workers therefore never race
or retry: PostgreSQL's row lock orders them, and each sends at its own slots. Slots are
computed on the database's clock, so drifting machine clocks do not matter; each worker turns
them into its own time when the answer arrives, so slots can shift by that query's latency
(the send tolerance and the margin under Attentive's 150/s absorb it).
"""

from __future__ import annotations

import hashlib
import hmac

from django.conf import settings
from django.db import connection

from attentive_sync.models import RateLimitState

_RESERVE_MANY = f"""
INSERT INTO {RateLimitState._meta.db_table} AS state (key, theoretical_arrival)
VALUES (%(key)s, clock_timestamp() + %(span)s * interval '1 second')
ON CONFLICT (key) DO UPDATE
SET theoretical_arrival = GREATEST(state.theoretical_arrival, clock_timestamp()) + %(span)s * interval '1 second'
RETURNING EXTRACT(EPOCH FROM theoretical_arrival - clock_timestamp())::float8 - %(span)s
"""


def limiter_key(api_key: str, endpoint: str) -> str:
    """Attentive limits per token and per endpoint. The key is a keyed digest (HMAC with
    SECRET_KEY), never the token: a database dump cannot confirm a guessed key."""
    digest = hmac.new(settings.SECRET_KEY.encode(), api_key.encode(), hashlib.sha256).hexdigest()[:16]
    return f"attentive:{digest}:{endpoint}"


def reserve_many(key: str, count: int, *, per_second: float) -> list[float]:
    """Reserve ``count`` consecutive slots under ``key`` in one statement (a batch of sends);
    return the seconds to wait before each, one interval apart.

    Runs in autocommit (outside any transaction) so the row lock is held for one statement,
    not for the caller's whole transaction."""
    if connection.in_atomic_block:
        raise RuntimeError("reserve_many() must not run inside a transaction: it would serialise every worker")
    interval = 1.0 / per_second
    with connection.cursor() as cursor:
        cursor.execute(_RESERVE_MANY, {"key": key, "span": interval * count})
        (first,) = cursor.fetchone()
    return [max(0.0, first + index * interval) for index in range(count)]

"""The shared rate limiter: slots one interval apart, whoever asks, from any connection."""

import threading

import pytest
from django.db import connection, transaction

from attentive_sync.models import RateLimitState
from attentive_sync.ratelimit import limiter_key, reserve_many

pytestmark = pytest.mark.django_db(transaction=True)


def theoretical_arrival(key):
    return RateLimitState.objects.get(key=key).theoretical_arrival


def test_a_batch_gets_consecutive_slots_one_interval_apart():
    waits = reserve_many("k", 5, per_second=100)
    assert waits[0] == pytest.approx(0, abs=0.005)  # an idle limiter: the first goes now
    # (the first may be clamped at zero: its slot began while the answer travelled back)
    assert [b - a for a, b in zip(waits[1:], waits[2:])] == pytest.approx([0.01] * 3, abs=1e-9)
    assert 0 < waits[1] - waits[0] <= 0.01 + 1e-9


def test_the_next_batch_starts_where_the_last_one_ended():
    reserve_many("k", 50, per_second=100)
    before = theoretical_arrival("k")
    reserve_many("k", 10, per_second=100)
    # Exactly ten intervals more on the limiter's timeline, however long the calls took.
    assert (theoretical_arrival("k") - before).total_seconds() == pytest.approx(0.1, abs=1e-6)


def test_keys_are_independent_and_never_contain_the_token():
    key = limiter_key("sk_live_SECRET", "/v1/events/custom")
    assert "SECRET" not in key and key.endswith(":/v1/events/custom")
    assert limiter_key("sk_live_SECRET", "/v1/events/custom") != limiter_key("sk_live_OTHER", "/v1/events/custom")
    reserve_many("x", 10, per_second=1)
    assert reserve_many("y", 1, per_second=1)[0] == pytest.approx(0, abs=0.005)


def test_reserving_inside_a_transaction_is_refused():
    with pytest.raises(RuntimeError, match="must not run inside a transaction"), transaction.atomic():
        reserve_many("k", 1, per_second=10)


def test_concurrent_connections_share_one_budget():
    """Eight threads, each with its own database connection, reserve 25 batches of 2 at 200/s:
    together they advance the limiter by exactly 400 intervals (no slot handed out twice)."""
    RateLimitState.objects.all().delete()
    reserve_many("shared", 1, per_second=200)
    start = theoretical_arrival("shared")

    def worker():
        try:
            for _ in range(25):
                reserve_many("shared", 2, per_second=200)
        finally:
            connection.close()

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # 400 slots at 5 ms = 2 s of the timeline, unless the limiter idled (then more, never less).
    assert (theoretical_arrival("shared") - start).total_seconds() >= 2.0 - 1e-6

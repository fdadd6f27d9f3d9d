"""The shared rate limiter: slots one interval apart, whoever asks, from any connection."""

import threading

import pytest
from django.db import connection, transaction

from attentive_sync.ratelimit import limiter_key, reserve, reserve_slot

pytestmark = pytest.mark.django_db(transaction=True)


def test_successive_reservations_are_one_interval_apart():
    waits = [reserve("k", per_second=100) for _ in range(5)]
    assert waits[0] == pytest.approx(0, abs=0.002)
    gaps = [later - earlier for earlier, later in zip(waits, waits[1:])]
    # Each reservation is ~0.01 s after the previous one, less the time that passed in between.
    assert all(0.005 < gap <= 0.0101 for gap in gaps), gaps


def test_a_burst_goes_out_at_once_then_spacing_resumes():
    waits = [reserve("b", per_second=10, burst=3) for _ in range(4)]
    assert waits[:3] == pytest.approx([0, 0, 0], abs=0.002)
    assert waits[3] == pytest.approx(0.1, abs=0.01)


def test_keys_are_independent_and_never_contain_the_token():
    key = limiter_key("sk_live_SECRET", "/v1/events/custom")
    assert "SECRET" not in key and key.endswith(":/v1/events/custom")
    reserve("x", per_second=1)
    assert reserve("y", per_second=1) == pytest.approx(0, abs=0.002)


def test_reserving_inside_a_transaction_is_refused():
    with pytest.raises(RuntimeError, match="must not run inside a transaction"), transaction.atomic():
        reserve("k", per_second=10)


def test_concurrent_connections_share_one_budget():
    """Eight threads, each with its own database connection, reserve 25 slots each at 200/s:
    every slot granted is distinct and exactly one interval from its neighbours."""
    slots, lock = [], threading.Lock()

    def worker():
        try:
            for _ in range(25):
                slot, _wait = reserve_slot("shared", per_second=200)
                with lock:
                    slots.append(slot)
        finally:
            connection.close()

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    slots.sort()
    assert len(slots) == 200
    gaps = [later - earlier for earlier, later in zip(slots, slots[1:])]
    # A gap is one interval, or more when the limiter sat idle; never less (no shared slot).
    assert min(gaps) == pytest.approx(0.005, abs=1e-4), min(gaps)

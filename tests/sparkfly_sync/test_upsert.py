"""The mirror's one write path: bulk, idempotent, race-safe upserts into PostgreSQL."""

import pytest
from django.db import transaction

from sparkfly_sync.models import LoyaltyEnrollment, Member
from sparkfly_sync.upsert import upsert_rows

pytestmark = pytest.mark.django_db


def member_rows(count, *, name="A"):
    return [
        {"sparkfly_id": i, "identifier": f"m-{i}", "first_name": name, "raw": {"id": i, "name": name}}
        for i in range(1, count + 1)
    ]


def upsert(model, rows, **kwargs):
    with transaction.atomic():
        return upsert_rows(model, rows, **kwargs)


def test_first_upsert_creates_every_row():
    result = upsert(Member, member_rows(50))
    assert (result.created, result.updated, result.unchanged) == (50, 0, 0)
    assert Member.objects.count() == 50


def test_same_rows_again_write_nothing_and_keep_synced_at():
    upsert(Member, member_rows(10))
    before = dict(Member.objects.values_list("sparkfly_id", "synced_at"))
    result = upsert(Member, member_rows(10))
    assert (result.created, result.updated, result.unchanged) == (0, 0, 10)
    assert dict(Member.objects.values_list("sparkfly_id", "synced_at")) == before


def test_changed_rows_are_updated_and_only_they():
    upsert(Member, member_rows(10))
    rows = member_rows(10)
    rows[3].update(first_name="B", raw={"id": 4, "name": "B"})
    result = upsert(Member, rows)
    assert (result.created, result.updated, result.unchanged) == (0, 1, 9)
    assert Member.objects.get(sparkfly_id=4).first_name == "B"


def test_duplicate_ids_in_one_batch_keep_the_last():
    rows = member_rows(2) + [{"sparkfly_id": 1, "identifier": "m-1", "first_name": "Z", "raw": {}}]
    result = upsert(Member, rows)
    assert result.created == 2
    assert Member.objects.get(sparkfly_id=1).first_name == "Z"


def test_a_column_left_out_of_a_row_keeps_its_stored_value():
    upsert(LoyaltyEnrollment, [{"sparkfly_id": 1, "tier_id": 3, "point_balance": 10, "raw": {"tier_id": 3}}])
    upsert(LoyaltyEnrollment, [{"sparkfly_id": 1, "point_balance": 20, "raw": {}}])
    enrollment = LoyaltyEnrollment.objects.get(sparkfly_id=1)
    assert (enrollment.tier_id, enrollment.point_balance) == (3, 20)


@pytest.mark.django_db(transaction=True)
def test_upsert_outside_a_transaction_is_refused():
    with pytest.raises(RuntimeError, match="inside transaction.atomic"):
        upsert_rows(Member, member_rows(1))


def test_rows_with_different_columns_in_one_batch_each_keep_what_they_leave_out():
    upsert(LoyaltyEnrollment, [{"sparkfly_id": i, "tier_id": 7, "point_balance": 1, "raw": {}} for i in (1, 2)])
    result = upsert(
        LoyaltyEnrollment,
        [
            {"sparkfly_id": 1, "point_balance": 5, "raw": {}},  # a list payload: no tier
            {"sparkfly_id": 2, "tier_id": 9, "point_balance": 5, "raw": {}},  # a single fetch: tier
            {"sparkfly_id": 3, "point_balance": 5, "raw": {}},  # new, no tier
        ],
    )
    assert (result.created, result.updated) == (1, 2)
    tiers = dict(LoyaltyEnrollment.objects.values_list("sparkfly_id", "tier_id"))
    assert tiers == {1: 7, 2: 9, 3: None}

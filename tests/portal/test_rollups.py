"""The dashboard's daily rollups equal a direct count of the records, however and whenever they
are refreshed, in the portal's time zone, per program."""

from __future__ import annotations

import math
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from django.core.management import call_command
from django.utils import timezone
from procrastinate import exceptions as procrastinate_exceptions

from attentive_sync.models import Delivery
from portal.models import DailyActivity, DailyDeliveries, MonthlyActivity, RollupRefresh
from portal.rollups import RangeGrains, range_grains, rollups_refresh
from portal.tasks import refresh_rollups
from sparkfly_sync.models import IssuanceRequest, LoyaltyEnrollment, Redemption
from tests.conftest import run_worker_until_idle
from tests.portal import activity
from tests.portal.activity import (
    AN_HOUR_AGO, delivery_table, direct_counts, direct_delivery_counts, monthly_table, per_month, rollup_table,
)

pytestmark = pytest.mark.django_db

NEW_YORK = ZoneInfo("America/New_York")
GOLD, SILVER = 7, 8
OFFER_A, OFFER_B = 501, 502
STORE_1, STORE_2 = 901, 902


@pytest.fixture(autouse=True)
def new_york_days(settings):
    # Days are the portal's: a redemption at 02:00 UTC is on the previous day in New York.
    settings.TIME_ZONE = "America/New_York"


@pytest.fixture
def records():
    """Members in one, two or no programs (one enrolled twice in the same program), their
    records spread over three days; everything arrived an hour ago."""
    earlier = timezone.now() - AN_HOUR_AGO
    activity.program(GOLD, "Gold")
    activity.program(SILVER, "Silver")
    activity.member(1, GOLD)
    activity.member(2, GOLD, GOLD, SILVER)
    activity.member(3)
    activity.credential(11, 1)
    activity.credential(12, 2)
    activity.credential(13, 3)
    # 14: a credential not mirrored yet; its redemptions count in "all programs" only.
    day1 = datetime(2026, 3, 1, 12, tzinfo=NEW_YORK)
    late_evening = datetime(2026, 3, 3, 2, tzinfo=ZoneInfo("UTC"))  # 2 March in New York
    for credential_id, offer_id, at, store_id in [
        (11, OFFER_A, day1, STORE_1),
        (11, OFFER_A, day1 + timedelta(hours=3), STORE_2),
        (12, OFFER_A, day1, STORE_1),
        (12, OFFER_B, late_evening, None),
        (13, OFFER_B, late_evening, STORE_2),
        (14, OFFER_B, day1 + timedelta(days=2), STORE_1),
    ]:
        activity.redemption(credential_id, offer_id, at, store_id=store_id, received_at=earlier)
    activity.issuance(1, [OFFER_A, OFFER_B], day1)
    activity.issuance(2, [OFFER_A], late_evening)
    activity.issuance(3, [OFFER_B], day1, state=IssuanceRequest.State.REFUSED)
    activity.issuance(3, [OFFER_B], None, state=IssuanceRequest.State.PENDING)
    gold_of_2 = LoyaltyEnrollment.objects.filter(member_id=2, program_id=GOLD).first().sparkfly_id
    silver_of_2 = LoyaltyEnrollment.objects.get(member_id=2, program_id=SILVER).sparkfly_id
    activity.points_redeemed(gold_of_2, 100, day1, received_at=earlier)
    activity.points_redeemed(silver_of_2, "250", late_evening, received_at=earlier)
    activity.points_redeemed(999_999, 40, late_evening, received_at=earlier)  # enrollment not mirrored
    activity.points_redeemed(gold_of_2, 7, day1, received_at=earlier, event_name="loyalty.enrollment.points.awarded")


def test_the_first_refresh_counts_every_record_once_per_program_of_its_member(records):
    assert rollups_refresh() is None  # nothing refreshed before: every day
    table = rollup_table()
    assert table == direct_counts()
    march_1, march_2 = datetime(2026, 3, 1).date(), datetime(2026, 3, 2).date()
    # The figures the definitions give, spelled out once.
    assert table[(march_1, 0, "total", 0)] == (3, 2, 100)
    assert table[(march_1, GOLD, "total", 0)] == (3, 2, 100)  # member 2 counted once in Gold
    assert (march_1, SILVER, "total", 0) in table and table[(march_1, SILVER, "total", 0)] == (1, 0, 0)
    assert table[(march_2, 0, "total", 0)] == (2, 1, 290)
    assert table[(march_2, SILVER, "total", 0)] == (1, 1, 250)
    assert table[(march_1, 0, "offer", OFFER_B)] == (0, 1, 0)
    assert table[(march_1, 0, "store", STORE_1)] == (2, 0, 0)
    assert not any(key[2] == "store" and key[3] is None for key in table)
    assert monthly_table() == per_month(direct_counts())


def test_a_refresh_takes_in_new_and_changed_records_and_touches_only_their_days(records):
    rollups_refresh()
    march_3 = datetime(2026, 3, 3).date()
    activity.redemption(12, OFFER_A, datetime(2026, 3, 3, 9, tzinfo=NEW_YORK), store_id=STORE_2)
    assert rollups_refresh() == [march_3]
    assert rollup_table() == direct_counts()

    # An issuance request becomes issued (an update, not an insert): on today's date.
    pending = IssuanceRequest.objects.get(state=IssuanceRequest.State.PENDING)
    pending.state, pending.finished_at = IssuanceRequest.State.ISSUED, timezone.now()
    pending.save()
    points_day = datetime(2026, 2, 20, 8, tzinfo=NEW_YORK)  # points reported late, for an old day
    activity.points_redeemed(LoyaltyEnrollment.objects.get(member_id=1).sparkfly_id, 30, points_day)
    # 3 March again: its redemption arrived within COMMIT_LAG of the previous refresh.
    assert rollups_refresh() == sorted({points_day.date(), march_3, timezone.localdate()})
    assert rollup_table() == direct_counts()
    assert rollup_table()[(timezone.localdate(), 0, "offer", OFFER_B)] == (0, 1, 0)
    assert rollup_table()[(points_day.date(), GOLD, "total", 0)] == (0, 0, 30)
    assert monthly_table() == per_month(rollup_table()) == per_month(direct_counts())
    assert monthly_table()[(date(2026, 2, 1), GOLD, "total", 0)] == (0, 0, 30)


def test_refreshing_twice_changes_nothing(records):
    rollups_refresh()
    before, months_before = rollup_table(), monthly_table()
    assert rollups_refresh() == []
    assert rollup_table() == before and monthly_table() == months_before
    rollups_refresh(days=[datetime(2026, 3, 1).date(), datetime(2026, 3, 2).date()])
    assert rollup_table() == before and monthly_table() == months_before
    rollups_refresh(everything=True)
    assert rollup_table() == before and monthly_table() == months_before


def test_a_record_committed_just_before_the_last_refresh_is_still_taken_in(records):
    """A transaction may set its record's time before a refresh reads and commit after it:
    the window reaches back (COMMIT_LAG) to catch it."""
    rollups_refresh()
    RollupRefresh.objects.update(refreshed_at=timezone.now())
    activity.redemption(13, OFFER_A, datetime(2026, 3, 1, 9, tzinfo=NEW_YORK),
                        received_at=timezone.now() - timedelta(minutes=2))
    assert rollups_refresh() == [datetime(2026, 3, 1).date()]
    assert rollup_table() == direct_counts()


def test_an_enrollment_mirrored_late_counts_after_a_full_rebuild(records):
    rollups_refresh()
    activity.member(4)
    activity.credential(15, 4)
    activity.redemption(15, OFFER_A, datetime(2026, 3, 1, 9, tzinfo=NEW_YORK), received_at=timezone.now() - AN_HOUR_AGO)
    LoyaltyEnrollment.objects.create(sparkfly_id=77_777, member_id=4, program_id=SILVER, synced_at=timezone.now())
    rollups_refresh()
    assert rollup_table() != direct_counts()  # the member's record was not touched
    call_command("refresh_rollups", "--all")
    assert rollup_table() == direct_counts()
    assert monthly_table() == per_month(direct_counts())


def test_the_command_says_what_it_recomputed(records, capsys):
    call_command("refresh_rollups")
    assert "Recomputed every day." in capsys.readouterr().out
    activity.redemption(11, OFFER_B, datetime(2026, 3, 2, 9, tzinfo=NEW_YORK))
    call_command("refresh_rollups")
    assert "Recomputed 1 day(s): 2026-03-02." in capsys.readouterr().out
    assert DailyActivity.objects.filter(day="2026-03-02", program_id=0, dimension="total").get().redemptions == 3


def test_deliveries_are_counted_per_day_and_status_and_followed_until_final(records, settings):
    """A delivery changes after it is created: its day is recomputed while it is pending or
    failed, and once more by the refresh after it settled."""
    # Days in March: past a retention window their counted days would be final (tests/portal/test_retention.py).
    settings.RETENTION_DAYS = 0
    earlier = datetime(2026, 3, 1, 12, tzinfo=NEW_YORK)
    activity.delivery(1, Delivery.Status.DELIVERED, created_at=earlier, delay=timedelta(seconds=2))
    retried = activity.delivery(2, Delivery.Status.FAILED, created_at=earlier)
    activity.delivery(3, Delivery.Status.DEAD, created_at=earlier + timedelta(days=1))
    rollups_refresh()
    assert delivery_table() == direct_delivery_counts() == {
        (earlier.date(), "delivered"): 1, (earlier.date(), "failed"): 1, (datetime(2026, 3, 2).date(), "dead"): 1,
    }
    Delivery.objects.filter(pk=retried.pk).update(status=Delivery.Status.DELIVERED, delivered_at=timezone.now())
    assert rollups_refresh() == [earlier.date()]  # open at the last refresh
    assert delivery_table() == direct_delivery_counts()
    assert delivery_table()[(earlier.date(), "delivered")] == 2
    assert rollups_refresh() == []  # nothing open any more, nothing new
    before = delivery_table()
    rollups_refresh(everything=True)
    assert delivery_table() == before
    buckets = dict(DailyDeliveries.objects.filter(status="delivered").values_list("delay_bucket", "deliveries"))
    two_seconds = int(math.log(2000) / math.log(DailyDeliveries.DELAY_RATIO))
    assert buckets[two_seconds] == 1 and sum(buckets.values()) == 2


@pytest.mark.django_db(transaction=True)
def test_the_periodic_job_refreshes_and_never_piles_up():
    refresh_rollups.defer(timestamp=0)
    with pytest.raises(procrastinate_exceptions.AlreadyEnqueued):
        refresh_rollups.defer(timestamp=1)  # one waiting run is enough
    run_worker_until_idle(queues=["maintenance"])
    assert RollupRefresh.objects.get().refreshed_at is not None


# --- the monthly sums ----------------------------------------------------------------------------


def test_months_are_the_sums_of_their_days_however_refreshed(records):
    """Records in several months and across a year end: each touched month is summed again from
    its days, the others are left alone, and a full rebuild gives the same months."""
    rollups_refresh()
    for credential_id, at in [(11, datetime(2025, 12, 31, 23, tzinfo=NEW_YORK)), (12, datetime(2026, 1, 1, 0, 30, tzinfo=NEW_YORK)),
                              (13, datetime(2026, 4, 30, 22, tzinfo=NEW_YORK)), (11, datetime(2026, 3, 31, 12, tzinfo=NEW_YORK))]:
        activity.redemption(credential_id, OFFER_A, at, store_id=STORE_1)
    activity.issuance(2, [OFFER_B], datetime(2026, 1, 1, 3, tzinfo=NEW_YORK))
    march = monthly_table()[(date(2026, 3, 1), 0, "total", 0)]
    rollups_refresh()
    months = monthly_table()
    assert months == per_month(rollup_table()) == per_month(direct_counts())
    assert months[(date(2025, 12, 1), GOLD, "offer", OFFER_A)] == (1, 0, 0)
    assert months[(date(2026, 1, 1), SILVER, "offer", OFFER_B)] == (0, 1, 0)
    assert months[(date(2026, 3, 1), 0, "total", 0)] == (march[0] + 1, march[1], march[2])
    assert months[(date(2026, 4, 1), 0, "store", STORE_1)] == (1, 0, 0)
    # A month whose days all went (a full rebuild after its records were deleted) goes too.
    Redemption.objects.filter(redeemed_at__gte=datetime(2026, 4, 1, tzinfo=NEW_YORK)).delete()
    rollups_refresh(everything=True)
    assert monthly_table() == per_month(direct_counts())
    assert not MonthlyActivity.objects.filter(month=date(2026, 4, 1)).exists()


@pytest.mark.parametrize("start, end, expected", [
    # Within one month: days only.
    (date(2026, 3, 5), date(2026, 3, 20), RangeGrains(days=((date(2026, 3, 5), date(2026, 3, 20)),), months=None)),
    (date(2026, 3, 1), date(2026, 3, 1), RangeGrains(days=((date(2026, 3, 1), date(2026, 3, 1)),), months=None)),
    (date(2026, 3, 31), date(2026, 3, 31), RangeGrains(days=((date(2026, 3, 31), date(2026, 3, 31)),), months=None)),
    (date(2026, 3, 2), date(2026, 3, 31), RangeGrains(days=((date(2026, 3, 2), date(2026, 3, 31)),), months=None)),
    (date(2026, 3, 1), date(2026, 3, 30), RangeGrains(days=((date(2026, 3, 1), date(2026, 3, 30)),), months=None)),
    # Two partial months, no whole one between.
    (date(2026, 3, 20), date(2026, 4, 10), RangeGrains(days=((date(2026, 3, 20), date(2026, 4, 10)),), months=None)),
    # Exactly one month, and a leap February.
    (date(2026, 3, 1), date(2026, 3, 31), RangeGrains(days=(), months=(date(2026, 3, 1), date(2026, 3, 1)))),
    (date(2024, 2, 1), date(2024, 2, 29), RangeGrains(days=(), months=(date(2024, 2, 1), date(2024, 2, 1)))),
    (date(2024, 2, 1), date(2024, 2, 28), RangeGrains(days=((date(2024, 2, 1), date(2024, 2, 28)),), months=None)),
    # Starting on the 1st, ending mid-month; starting mid-month, ending on the last day.
    (date(2026, 1, 1), date(2026, 3, 15),
     RangeGrains(days=((date(2026, 3, 1), date(2026, 3, 15)),), months=(date(2026, 1, 1), date(2026, 2, 1)))),
    (date(2026, 1, 15), date(2026, 3, 31),
     RangeGrains(days=((date(2026, 1, 15), date(2026, 1, 31)),), months=(date(2026, 2, 1), date(2026, 3, 1)))),
    # Across a year end, partial at both edges: a dashboard year.
    (date(2025, 11, 24), date(2026, 11, 23),
     RangeGrains(days=((date(2025, 11, 24), date(2025, 11, 30)), (date(2026, 11, 1), date(2026, 11, 23))),
                 months=(date(2025, 12, 1), date(2026, 10, 1)))),
    (date(2025, 12, 31), date(2026, 2, 1),
     RangeGrains(days=((date(2025, 12, 31), date(2025, 12, 31)), (date(2026, 2, 1), date(2026, 2, 1))),
                 months=(date(2026, 1, 1), date(2026, 1, 1)))),
    (date(2025, 1, 1), date(2025, 12, 31), RangeGrains(days=(), months=(date(2025, 1, 1), date(2025, 12, 1)))),
])
def test_a_range_splits_into_whole_months_and_the_days_around_them(start, end, expected):
    grains = range_grains(start, end)
    assert grains == expected
    # Every day of the range exactly once.
    covered = [first + timedelta(days=n) for first, last in grains.days for n in range((last - first).days + 1)]
    if grains.months:
        month = grains.months[0]
        while month <= grains.months[1]:
            following = (month + timedelta(days=32)).replace(day=1)
            covered += [month + timedelta(days=n) for n in range((following - month).days)]
            month = following
    assert sorted(covered) == [start + timedelta(days=n) for n in range((end - start).days + 1)]


def test_a_refresh_after_one_new_record_rewrites_only_that_records_day(records):
    rollups_refresh()
    other_days = set(DailyActivity.objects.exclude(day=date(2026, 3, 2)).values_list("pk", flat=True))
    activity.redemption(11, OFFER_B, datetime(2026, 3, 2, 9, tzinfo=NEW_YORK), store_id=STORE_1)
    assert rollups_refresh() == [date(2026, 3, 2)]
    assert set(DailyActivity.objects.exclude(day=date(2026, 3, 2)).values_list("pk", flat=True)) == other_days
    assert rollup_table() == direct_counts()
    # Days apart (two ranges of instants) are each recomputed whole, and nothing between them.
    activity.redemption(12, OFFER_A, datetime(2026, 3, 1, 23, tzinfo=NEW_YORK))
    activity.issuance(2, [OFFER_B], datetime(2026, 3, 3, 0, 30, tzinfo=NEW_YORK))
    march_2 = set(DailyActivity.objects.filter(day=date(2026, 3, 2)).values_list("pk", flat=True))
    assert rollups_refresh(days=[date(2026, 3, 3), date(2026, 3, 1)]) == [date(2026, 3, 1), date(2026, 3, 3)]
    assert set(DailyActivity.objects.filter(day=date(2026, 3, 2)).values_list("pk", flat=True)) == march_2
    assert rollup_table() == direct_counts()

"""manage.py seed_demo: demo data of every kind, in every status, safe to run again."""

from __future__ import annotations

import io
import uuid

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.db.models import Sum
from django.utils import timezone

from attentive_sync.models import Delivery, DeliveryAttempt
from portal.demo import DEMO_ID_BASE
from portal.models import DailyActivity
from sparkfly_sync.events import OFFER_STATE_CREATED, OFFER_STATE_REDEEMED, POINTS_REDEEMED
from sparkfly_sync.models import (
    Channel, Credential, IssuanceRequest, LoyaltyEnrollment, LoyaltyProgram, Member, Merchant, Notification, Offer,
    OfferChannel, Redemption, Store,
)
from sparkfly_sync.payloads import normalize_phone

pytestmark = pytest.mark.django_db

SMALL = ["--members", "1000", "--redemptions", "2000", "--offers", "20", "--stores", "30", "--days", "30"]


def seed(*args: str) -> str:
    out = io.StringIO()
    call_command("seed_demo", *args, stdout=out)
    return out.getvalue()


def counts() -> dict[str, int]:
    models = (LoyaltyProgram, Merchant, Store, Channel, Offer, OfferChannel, Member, LoyaltyEnrollment, Credential,
              Redemption, Notification, IssuanceRequest, Delivery, DeliveryAttempt)
    return {model.__name__: model.objects.count() for model in models}


def test_it_fills_every_table_with_the_counts_asked():
    seed(*SMALL)

    seeded = counts()
    attempts = seeded.pop("DeliveryAttempt")
    assert seeded == {
        "LoyaltyProgram": 2, "Merchant": 20, "Store": 30, "Channel": 3, "Offer": 20, "OfferChannel": 60,
        "Member": 1000, "LoyaltyEnrollment": 1000, "Credential": 1000, "Redemption": 2000, "Notification": 200,
        "IssuanceRequest": 100, "Delivery": 1990 + 200 + 90,  # one redemption in 200 not forwarded; issued only
    }
    # Failed ones tried twice, expired three times, dead once, and one delivered in ten once.
    deliveries = Delivery.objects.all()
    assert attempts == (
        2 * deliveries.filter(status="failed").count() + 3 * deliveries.filter(status="expired").count()
        + deliveries.filter(status="dead").count() + sum(1 for pk in deliveries.filter(status="delivered")
                                                         .values_list("pk", flat=True) if pk % 10 == 0)
    )
    assert not Member.objects.filter(sparkfly_id__lte=DEMO_ID_BASE).exists()  # far from the sandbox's ids


def test_the_records_hang_together():
    seed(*SMALL)
    redemption = Redemption.objects.filter(state="forwarded").select_related("delivery").first()
    credential = Credential.objects.get(sparkfly_id=redemption.credential_id)
    member = Member.objects.get(sparkfly_id=credential.member_id)

    assert redemption.offer_id in credential.offer_ids and redemption.sf_uid == member.identifier
    assert OfferChannel.objects.filter(offer_id=redemption.offer_id, xid=redemption.xid).exists()
    assert Store.objects.filter(sparkfly_id=redemption.store_id).exists()
    delivery = redemption.delivery
    assert delivery.external_event_id == str(redemption.dedup_key) and delivery.occurred_at == redemption.redeemed_at
    assert delivery.payload["user"]["externalIdentifiers"]["clientUserId"] == member.identifier
    assert delivery.payload["properties"]["campaign"]["xid"] == redemption.xid
    assert LoyaltyEnrollment.objects.filter(member_id=member.sparkfly_id).count() == 1
    # Every phone is one the member search can read back; emails are at example.com.
    phones = list(Member.objects.exclude(phone="").values_list("phone", flat=True))
    assert phones and all(normalize_phone(phone, "US") == phone for phone in phones)
    assert Member.objects.filter(phone="").exists() and Member.objects.filter(email="").exists()
    assert all(email.endswith("@example.com") for email in Member.objects.exclude(email="").values_list("email", flat=True))


def test_every_status_is_present_with_errors_where_they_belong():
    seed(*SMALL)

    assert set(Delivery.objects.values_list("status", flat=True)) == set(Delivery.Status.values)
    assert not Delivery.objects.filter(status__in=["failed", "dead", "expired"], last_error="").exists()
    assert not Delivery.objects.filter(status="delivered", delivered_at=None).exists()
    # Given up ones are the alert's dead letters, as real ones are; no other is.
    assert not Delivery.objects.filter(status__in=["dead", "expired"], dead_letter_at=None).exists()
    assert not Delivery.objects.exclude(status__in=["dead", "expired"]).filter(dead_letter_at__isnull=False).exists()
    assert set(Delivery.objects.values_list("event_type", flat=True)) == {OFFER_STATE_REDEEMED, POINTS_REDEEMED,
                                                                          OFFER_STATE_CREATED}
    assert set(IssuanceRequest.objects.values_list("state", flat=True)) == set(IssuanceRequest.State.values)
    assert set(Redemption.objects.values_list("state", flat=True)) == {"forwarded", "failed"}
    dead = DeliveryAttempt.objects.filter(delivery__status="dead").first()
    assert dead.status_code == 400 and "not a valid phone number" in dead.response_body


def test_redemptions_are_spread_over_the_days_asked():
    seed(*SMALL)

    days = {moment.date() for moment in Redemption.objects.values_list("redeemed_at", flat=True)}
    oldest = Redemption.objects.order_by("redeemed_at").first().redeemed_at
    assert len(days) >= 30 and timezone.now() - oldest <= timezone.timedelta(days=30)


def test_the_dashboard_rollups_are_rebuilt():
    seed(*SMALL)

    totals = DailyActivity.objects.filter(program_id=DailyActivity.ALL_PROGRAMS, dimension="total")
    assert totals.aggregate(n=Sum("redemptions"))["n"] == 2000
    assert totals.aggregate(n=Sum("issuances"))["n"] == 90
    assert totals.aggregate(n=Sum("points_redeemed"))["n"] == Notification.objects.count() * 550  # 100…1000 evenly


def test_running_it_again_adds_nothing_and_larger_counts_add_the_difference():
    seed(*SMALL)
    before = counts()

    seed(*SMALL)
    assert counts() == before

    seed("--members", "1500", "--redemptions", "2000", "--offers", "20", "--stores", "30", "--days", "30")
    after = counts()
    assert after["Member"] == 1500 and after["Redemption"] == 2000 and after["IssuanceRequest"] == 150


def test_reset_removes_the_demo_rows_and_nothing_else():
    real = Member.objects.create(sparkfly_id=1001, identifier="real", synced_at=timezone.now())
    real_delivery = Delivery.objects.create(external_event_id=str(uuid.uuid4()), event_type="x", payload={}, occurred_at=timezone.now())
    seed(*SMALL)

    output = seed("--reset", "--members", "10", "--redemptions", "10", "--offers", "2", "--stores", "2")

    assert "2,000 redemptions" in output.splitlines()[0]
    assert Member.objects.count() == 11 and Member.objects.filter(pk=real.pk).exists()
    assert Delivery.objects.filter(pk=real_delivery.pk).exists()
    assert Redemption.objects.count() == 10 and Offer.objects.count() == 2
    assert Delivery.objects.count() <= 1 + 10 + 1 + 1  # the real one, then the new run's


def test_a_database_that_may_hold_real_data_needs_yes(settings, monkeypatch):
    settings.DEBUG = False
    monkeypatch.setenv("DATABASE_URL", "postgres://portal@db.example/portal")
    monkeypatch.setitem(connection.settings_dict, "NAME", "portal")

    with pytest.raises(CommandError, match="Not seeding: the database 'portal' is neither a test database"):
        seed("--members", "10", "--redemptions", "10")
    assert not Member.objects.exists()

    seed("--members", "10", "--redemptions", "10", "--yes")
    assert Member.objects.count() == 10


def test_counts_must_be_positive():
    with pytest.raises(CommandError):
        seed("--members", "0", "--redemptions", "10")


def index_definitions(*models) -> set[tuple[str, str]]:
    """Each valid index's name and its definition up to any WHERE: PostgreSQL prints a rebuilt
    partial index's predicate in another (equivalent) form than the migration's."""
    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT i.relname, split_part(pg_get_indexdef(x.indexrelid), ' WHERE ', 1)
            FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid JOIN pg_class t ON t.oid = x.indrelid
            WHERE t.relname = ANY(%s) AND x.indisvalid
            """,
            [[model._meta.db_table for model in models]],
        )
        return set(cursor.fetchall())


def test_a_big_seed_builds_the_indexes_it_dropped_again():
    tables = (Member, Credential, LoyaltyEnrollment, Delivery, Redemption)
    before = index_definitions(*tables)

    seed("--members", "10000", "--redemptions", "10000", "--offers", "5", "--stores", "5", "--days", "5")

    assert index_definitions(*tables) == before
    assert Member.objects.filter(email="demo.member10@example.com").exists()  # through the rebuilt index


def test_problems_are_spread_over_the_whole_range_not_bunched_in_time():
    seed(*SMALL)

    for status in ("failed", "dead", "expired", "delivered"):
        moments = list(Delivery.objects.filter(status=status).values_list("occurred_at", flat=True))
        assert max(moments) - min(moments) > timezone.timedelta(days=20), status

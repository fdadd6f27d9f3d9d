"""Builders of the records the dashboard counts (redemptions, issuances, points redeemed), and
the same counts done directly on them: what the daily rollups must equal."""

from __future__ import annotations

import itertools
import uuid
from collections import Counter
from datetime import datetime, timedelta

from django.utils import timezone

from attentive_sync.models import Delivery
from portal.models import DailyActivity, DailyDeliveries, MonthlyActivity
from sparkfly_sync.models import (
    Credential, IssuanceRequest, LoyaltyEnrollment, LoyaltyProgram, Member, Notification, Redemption,
)
from sparkfly_sync.serializers import POINTS_REDEEMED

_ids = itertools.count(1000)
AN_HOUR_AGO = timedelta(hours=1)


def program(sparkfly_id: int, name: str) -> LoyaltyProgram:
    return LoyaltyProgram.objects.create(sparkfly_id=sparkfly_id, name=name, synced_at=timezone.now())


def member(sparkfly_id: int, *programs: int) -> Member:
    """A member enrolled in ``programs`` (a program named twice: two enrollments in it)."""
    now = timezone.now()
    person = Member.objects.create(sparkfly_id=sparkfly_id, identifier=f"m{sparkfly_id}", synced_at=now)
    for program_id in programs:
        LoyaltyEnrollment.objects.create(sparkfly_id=next(_ids), member_id=sparkfly_id, program_id=program_id, synced_at=now)
    return person


def credential(sparkfly_id: int, member_id: int | None) -> Credential:
    return Credential.objects.create(sparkfly_id=sparkfly_id, member_id=member_id, synced_at=timezone.now())


def redemption(credential_id: int, offer_id: int, redeemed_at: datetime, *, store_id: int | None = None,
               received_at: datetime | None = None) -> Redemption:
    return Redemption.objects.create(
        dedup_key=uuid.uuid4(), credential_id=credential_id, offer_id=offer_id, store_id=store_id,
        redeemed_at=redeemed_at, received_at=received_at or timezone.now(),
    )


def issuance(member_id: int, offer_ids: list[int], finished_at: datetime | None, *,
             state: str = IssuanceRequest.State.ISSUED) -> IssuanceRequest:
    return IssuanceRequest.objects.create(
        idempotency_key=uuid.uuid4(), member_id=member_id, offer_ids=offer_ids, state=state, finished_at=finished_at,
    )


def points_redeemed(enrollment_id: int, points, occurred_at: datetime, *, received_at: datetime | None = None,
                    event_name: str = POINTS_REDEEMED) -> Notification:
    """A stored notification: the verified document whole, as ``sparkfly_sync.inbound`` keeps it."""
    payload = {
        "event_name": event_name,
        "data": {"points_redeemed": points, "member": {"id": 1, "enrollment": {"id": enrollment_id}},
                 "reward_state": {"id": next(_ids)}},
    }
    return Notification.objects.create(
        event_id=str(uuid.uuid4()), event_name=event_name, occurred_at=occurred_at, payload=payload,
        received_at=received_at or timezone.now(),
    )


def rollup_table() -> dict[tuple, tuple[int, int, int]]:
    return {
        (row.day, row.program_id, row.dimension, row.key): (row.redemptions, row.issuances, row.points_redeemed)
        for row in DailyActivity.objects.all()
    }


def monthly_table() -> dict[tuple, tuple[int, int, int]]:
    return {
        (row.month, row.program_id, row.dimension, row.key): (row.redemptions, row.issuances, row.points_redeemed)
        for row in MonthlyActivity.objects.all()
    }


def per_month(table: dict[tuple, tuple[int, int, int]]) -> dict[tuple, tuple[int, int, int]]:
    """A per-day table (``rollup_table``, ``direct_counts``) summed per calendar month."""
    months: dict[tuple, tuple[int, int, int]] = {}
    for (day, *rest), figures in table.items():
        key = (day.replace(day=1), *rest)
        months[key] = tuple(a + b for a, b in zip(months.get(key, (0, 0, 0)), figures))
    return months


def direct_counts() -> dict[tuple, tuple[int, int, int]]:
    """The rollups' figures counted record by record, in Python, from the definitions."""
    programs_of: dict[int, set[int]] = {}
    for enrollment in LoyaltyEnrollment.objects.exclude(program_id=None):
        programs_of.setdefault(enrollment.member_id, set()).add(enrollment.program_id)
    member_of = dict(Credential.objects.values_list("sparkfly_id", "member_id"))
    program_of_enrollment = dict(LoyaltyEnrollment.objects.values_list("sparkfly_id", "program_id"))
    redemptions, issuances, points = Counter(), Counter(), Counter()
    for record in Redemption.objects.all():
        day = timezone.localdate(record.redeemed_at)
        for program_id in {0} | programs_of.get(member_of.get(record.credential_id), set()):
            redemptions[(day, program_id, "total", 0)] += 1
            redemptions[(day, program_id, "offer", record.offer_id)] += 1
            if record.store_id is not None:
                redemptions[(day, program_id, "store", record.store_id)] += 1
    for request in IssuanceRequest.objects.filter(state=IssuanceRequest.State.ISSUED):
        day = timezone.localdate(request.finished_at)
        for program_id in {0} | programs_of.get(request.member_id, set()):
            for offer_id in request.offer_ids:
                issuances[(day, program_id, "total", 0)] += 1
                issuances[(day, program_id, "offer", offer_id)] += 1
    for notification in Notification.objects.filter(event_name=POINTS_REDEEMED):
        day = timezone.localdate(notification.occurred_at or notification.received_at)
        data = notification.payload["data"]
        program_id = program_of_enrollment.get(int(data["member"]["enrollment"]["id"]))
        for key in {0} | ({program_id} if program_id else set()):
            points[(day, key, "total", 0)] += int(data["points_redeemed"])
    keys = set(redemptions) | set(issuances) | set(points)
    return {key: (redemptions[key], issuances[key], points[key]) for key in keys}


def delivery_table() -> dict[tuple, int]:
    """The delivery rollups per (day, status), delay buckets summed."""
    table: Counter = Counter()
    for row in DailyDeliveries.objects.all():
        table[(row.day, row.status)] += row.deliveries
    return dict(table)


def direct_delivery_counts() -> dict[tuple, int]:
    return dict(Counter((timezone.localdate(d.created_at), d.status) for d in Delivery.objects.all()))


def delivery(n: int, status: str, *, created_at: datetime, delay: timedelta | None = None) -> Delivery:
    record = Delivery.objects.create(
        external_event_id=f"evt-{n}", event_type="sparkfly.redemption", payload={}, status=status,
        occurred_at=created_at, delivered_at=created_at + delay if delay else None,
    )
    Delivery.objects.filter(pk=record.pk).update(created_at=created_at)  # auto_now_add on create
    record.created_at = created_at
    return record

"""Demo data at scale (``manage.py seed_demo``): a mirror, redemptions, issuances, points
redemptions and deliveries, for trying the pages and benchmarking them at a million rows.

Every table is filled by one ``INSERT … SELECT … FROM generate_series`` (no row passes through
Python), so a million members and a million redemptions take about a minute, not hours.

* Sparkfly ids start at ``DEMO_ID_BASE``, far above any the sandbox hands out (``sparkfly_sync.
  sandbox``: thousands to hundreds of thousands), so demo rows never collide with a synced mirror.
  Redemption dedup keys and the deliveries' external event ids start with ``DEMO_UUID_PREFIX``.
* Values derive from each row's number through a hash, not ``random()``: a
  redemption and its delivery agree on the instant without a join, and a second run produces
  the same rows. Every insert skips rows already there (``ON CONFLICT DO NOTHING``), so seeding
  again with the same or larger counts only adds what is missing; ``demo_reset`` removes it all.
* Phones are ``+1 <area code> 555 xxxx``: valid E.164 numbers (the member search parses them)
  in the exchange the North American plan keeps for fiction; emails are at example.com.
* Nothing is sent anywhere: deliveries are rows in their final or waiting states, and no job is
  queued.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass

import phonenumbers
from django.conf import settings
from django.db import connection, transaction

from attentive_sync.models import Delivery, DeliveryAttempt
from sparkfly_sync.events import OFFER_STATE_CREATED, OFFER_STATE_REDEEMED, POINTS_REDEEMED
from sparkfly_sync.models import (
    Channel,
    Credential,
    IssuanceRequest,
    LoyaltyEnrollment,
    LoyaltyProgram,
    Member,
    Merchant,
    Notification,
    Offer,
    OfferChannel,
    Redemption,
    Store,
)
from sparkfly_sync.serializers import POINTS_REDEEMED as POINTS_NOTIFICATION

DEMO_ID_BASE = 9_000_000_000
DEMO_UUID_PREFIX = "de0de0de-"
CHANNELS = 3
MERCHANTS = 20
# One redemption in this many was not forwarded (its forwarding failed): the dashboard shows some.
UNFORWARDED_EVERY = 200


@dataclass(frozen=True)
class DemoSize:
    members: int
    redemptions: int
    offers: int = 200
    stores: int = 500
    programs: int = 2
    days: int = 365

    @property
    def issuances(self) -> int:
        return max(1, self.members // 10)

    @property
    def points_redemptions(self) -> int:
        return max(1, self.redemptions // 10)


def demo_database_refusal() -> str:
    """Why seeding this database needs ``--yes`` (``""`` when it is a test or development one)."""
    name = connection.settings_dict["NAME"]
    embedded = not os.environ.get("DATABASE_URL")  # portal.settings then starts the embedded PostgreSQL
    if settings.DEBUG or embedded or name.startswith(("test_", "bench_")):
        return ""
    return (
        f"the database {name!r} is neither a test database nor the embedded development one, and DEBUG is off: "
        "it may hold real data"
    )


# --- SQL expressions of a row's number ------------------------------------------------------------
# ``n`` is the row's number (1, 2, …) in every statement; these give its derived values, so two
# statements computing the same member's email agree without reading each other's rows.


def _hash(n: str, salt: int) -> str:
    """A number in [0, 1) that looks random but is fixed for (n, salt): PostgreSQL's own hash of
    the number, seeded by ``salt``. (A multiplicative hash would not do: its values for two
    salts differ by a constant, so a delivery's status would follow from its time.)"""
    return f"((hashint8extended(({n})::bigint, {salt}) & 4294967295)::float8 / 4294967296)"


def _id(n: str) -> str:
    return f"(%(base)s + ({n}))"


def _uuid(kind: int, n: str) -> str:
    """``de0de0de-000<kind>-4000-8000-<n in hex>``: a demo row's UUID, recognisable by its prefix."""
    return f"('{DEMO_UUID_PREFIX}000{kind}-4000-8000-' || lpad(to_hex({n}), 12, '0'))"


def _member_identifier(m: str) -> str:
    return f"('demo-' || ({m}))"


def _member_email(m: str) -> str:
    return f"(CASE WHEN ({m}) % 70 = 0 THEN '' ELSE 'demo.member' || ({m}) || '@example.com' END)"


def _member_phone(m: str) -> str:
    return (
        f"(CASE WHEN ({m}) % 50 = 0 THEN '' ELSE '+1' || (%(area_codes)s::text[])[(({m}) / 10000) % %(area_code_count)s + 1]"
        f" || '555' || lpad((({m}) % 10000)::text, 4, '0') END)"
    )


_OFFER_WORDS = "ARRAY['Free Coffee', 'Half-price Bagel', 'Double Points Day', '10% off', 'Free Muffin', 'BOGO Latte', 'Birthday Treat', 'Free Delivery']"


def _offer_name(o: str) -> str:
    return f"('Demo offer ' || ({o}) || ': ' || ({_OFFER_WORDS})[({o}) % 8 + 1])"


def _credential_offer(c: str, size: DemoSize) -> str:
    """Credential ``c``'s offer number (credential c belongs to member c)."""
    return f"((({c}) % {size.offers}) + 1)"


def _credential_channel(c: str) -> str:
    return f"((({c}) % {CHANNELS}) + 1)"


def _credential_code(c: str) -> str:
    return f"('DEMO' || lpad(({c})::text, 10, '0'))"


def _xid(o: str, ch: str) -> str:
    return f"('DEMO-' || ({o}) || '-' || ({ch}))"


def _instant(n: str, salt: int) -> str:
    """An instant within the last ``days`` days."""
    return f"(%(now)s::timestamptz - {_hash(n, salt)} * %(days)s * interval '1 day')"


def _event_user(m: str) -> str:
    return (
        f"jsonb_strip_nulls(jsonb_build_object('phone', nullif({_member_phone(m)}, ''), 'email', nullif({_member_email(m)}, ''),"
        f" 'externalIdentifiers', jsonb_build_object('clientUserId', {_member_identifier(m)})))"
    )


def _rfc3339(instant: str) -> str:
    return f"to_char(({instant}) AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"+00:00\"')"


# A delivery's status, and what came with it, from a number in [0, 1): mostly delivered, a
# few of every other status so the deliveries page and the dashboard show each.
_STATUS = (
    "(CASE WHEN {x} < 0.95 THEN 'delivered' WHEN {x} < 0.965 THEN 'pending' WHEN {x} < 0.98 THEN 'failed'"
    " WHEN {x} < 0.99 THEN 'dead' ELSE 'expired' END)"
)
_ERRORS = {
    "failed": "Attentive API error 503: Service Unavailable",
    "dead": "Attentive API error 400: Invalid request: user.phone is not a valid phone number",
    "expired": "Attentive API error 429: Too Many Requests — no retry fits before the maximum event age",
}
_ANSWERS = {  # status → (HTTP status, body, attempt outcome, attempts)
    "delivered": (200, "", "delivered", 1),
    "failed": (503, '{"message": "Service Unavailable"}', "retry", 2),
    "dead": (400, '{"message": "Invalid request: user.phone is not a valid phone number"}', "dead", 1),
    "expired": (429, '{"message": "Too Many Requests"}', "expired", 3),
}


def _delivery_insert(*, source: str, kind: int, event_type: str, occurred: str, payload_properties: str, member: str) -> str:
    """An INSERT of one delivery per row of ``source`` (a FROM clause naming its number ``n``)."""
    status = _STATUS.format(x=_hash("n", kind * 7 + 5))
    external_id = _uuid(kind, "n")
    created = f"({occurred} + interval '1 second' + {_hash('n', kind * 7 + 6)} * interval '2 seconds')"
    errors = " ".join(f"WHEN '{status}' THEN '{text}'" for status, text in _ERRORS.items())
    return f"""
        INSERT INTO {Delivery._meta.db_table}
            (external_event_id, kind, event_type, payload, status, occurred_at, created_at, attempts,
             next_attempt_at, leased_until, last_error, delivered_at, dead_letter_at)
        SELECT external_id, 'event', '{event_type}',
               jsonb_build_object('type', '{event_type}', 'properties', {payload_properties},
                                  'occurredAt', {_rfc3339(occurred)}, 'user', {_event_user(member)},
                                  'externalEventId', external_id),
               status, {occurred}, created,
               CASE status WHEN 'pending' THEN 0 WHEN 'failed' THEN 2 WHEN 'expired' THEN 3 ELSE 1 END,
               CASE status WHEN 'pending' THEN created WHEN 'failed' THEN %(now)s::timestamptz + interval '5 minutes' END,
               NULL,
               CASE status {errors} ELSE '' END,
               CASE WHEN status = 'delivered' THEN created + (0.1 + {_hash('n', kind * 7 + 7)} * 2) * interval '1 second' END,
               -- given up: dead at its one try, expired at the maximum event age (8 h)
               CASE status WHEN 'dead' THEN created + interval '2 seconds'
                           WHEN 'expired' THEN LEAST({occurred} + interval '8 hours', %(now)s::timestamptz) END
        FROM (SELECT n, {external_id} AS external_id, {status} AS status, {created} AS created FROM {source}) AS rows
        ON CONFLICT DO NOTHING
    """


def _statements(size: DemoSize) -> list[tuple[str, str]]:
    """(what, SQL) in the order they run: deliveries before the records that point at them."""
    n = "n"
    member_of_redemption = f"(((n::bigint * 7919) % {size.members}) + 1)"  # its credential's number too
    member_of_points = f"(((n::bigint * 104729) % {size.members}) + 1)"
    redemption_offer = _credential_offer(member_of_redemption, size)
    redemption_channel = _credential_channel(member_of_redemption)
    redemption_store = f"((n % {size.stores}) + 1)"
    redeemed_at = _instant(n, 1)
    points_at = _instant(n, 3)
    issued_at = _instant(n, 4)
    issuance_offer = _credential_offer(n, size)
    points = "(100 * (1 + n % 10))"
    issued = "(n % 100 < 90)"
    redemption_forwarded = f"(n % {UNFORWARDED_EVERY} <> 0)"
    tables = {model.__name__: model._meta.db_table for model in (
        LoyaltyProgram, Merchant, Store, Channel, Offer, OfferChannel, Member, LoyaltyEnrollment, Credential,
        IssuanceRequest, Notification, Redemption,
    )}
    mirror = "raw, synced_at, sparkfly_id"
    mirror_values = f"jsonb_build_object('id', {_id(n)}, 'demo', true), %(now)s, {_id(n)}"
    return [
        ("loyalty programs", f"""
            INSERT INTO {tables['LoyaltyProgram']} ({mirror}, name, status, description)
            SELECT {mirror_values}, 'Demo rewards ' || n, 'active', 'A demo loyalty program (manage.py seed_demo)'
            FROM generate_series(1, {size.programs}) n ON CONFLICT DO NOTHING"""),
        ("merchants", f"""
            INSERT INTO {tables['Merchant']} ({mirror}, name, is_active)
            SELECT {mirror_values}, 'Demo merchant ' || n, true
            FROM generate_series(1, {MERCHANTS}) n ON CONFLICT DO NOTHING"""),
        ("stores", f"""
            INSERT INTO {tables['Store']} ({mirror}, merchant_id, name, number, is_active, city, state)
            SELECT {mirror_values}, {_id(f'n % {MERCHANTS} + 1')}, 'Demo store ' || n, 'D' || n, true,
                   (ARRAY['Austin', 'Boston', 'Chicago', 'Denver', 'Miami', 'Portland', 'Seattle'])[n % 7 + 1],
                   (ARRAY['TX', 'MA', 'IL', 'CO', 'FL', 'OR', 'WA'])[n % 7 + 1]
            FROM generate_series(1, {size.stores}) n ON CONFLICT DO NOTHING"""),
        ("channels", f"""
            INSERT INTO {tables['Channel']} ({mirror}, name, conversion_callback_url, conversion_callback_fingerprint,
                                            allow_sms_keyword, allow_hmac)
            SELECT {mirror_values}, (ARRAY['Demo app', 'Demo SMS', 'Demo email'])[n], '', '', false, false
            FROM generate_series(1, {CHANNELS}) n ON CONFLICT DO NOTHING"""),
        ("offers", f"""
            INSERT INTO {tables['Offer']} ({mirror}, merchant_id, name, status, activates_at, expires_at)
            SELECT jsonb_build_object('id', {_id(n)}, 'demo', true, 'description', 'A demo offer'), %(now)s, {_id(n)},
                   {_id(f'n % {MERCHANTS} + 1')}, {_offer_name(n)},
                   CASE WHEN n % 20 = 0 THEN 'suspended' WHEN n % 25 = 0 THEN 'pending' ELSE 'approved' END,
                   %(now)s::timestamptz - %(days)s * interval '1 day', %(now)s::timestamptz + interval '90 days'
            FROM generate_series(1, {size.offers}) n ON CONFLICT DO NOTHING"""),
        ("offer channels", f"""
            INSERT INTO {tables['OfferChannel']} (offer_id, channel_id, xid, raw, synced_at)
            SELECT {_id('o')}, {_id('c')}, {_xid('o', 'c')}, '{{}}', %(now)s
            FROM generate_series(1, {size.offers}) o CROSS JOIN generate_series(1, {CHANNELS}) c ON CONFLICT DO NOTHING"""),
        ("members", f"""
            INSERT INTO {tables['Member']} ({mirror}, identifier, notification_mode, first_name, last_name, email, phone)
            SELECT {mirror_values}, {_member_identifier(n)}, 'sms',
                   (ARRAY['Ada', 'Ben', 'Chloe', 'Dev', 'Esme', 'Farid', 'Grace', 'Hugo', 'Iris', 'Jon'])[n % 10 + 1],
                   (ARRAY['Lovelace', 'Okafor', 'Nguyen', 'Patel', 'Garcia', 'Kim', 'Hopper', 'Silva'])[n % 8 + 1],
                   {_member_email(n)}, {_member_phone(n)}
            FROM generate_series(1, {size.members}) n ON CONFLICT DO NOTHING"""),
        ("loyalty enrollments", f"""
            INSERT INTO {tables['LoyaltyEnrollment']} ({mirror}, member_id, program_id, external_id, source, status,
                point_balance, historical_points, tier_id, tier_term_start_time, tier_term_end_date, fraud_risk_level)
            SELECT {mirror_values}, {_id(n)}, {_id(f'n % {size.programs} + 1')}, 'demo-enrollment-' || n, 'demo',
                   CASE WHEN n % 97 = 0 THEN 'suspended' ELSE 'active' END,
                   ({_hash(n, 8)} * 5000)::int, ({_hash(n, 8)} * 5000)::int + ({_hash(n, 9)} * 20000)::int,
                   {_id(f'n % 3 + 1')}, %(now)s::timestamptz - interval '100 days', (%(now)s::timestamptz + interval '265 days')::date,
                   'none'
            FROM generate_series(1, {size.members}) n ON CONFLICT DO NOTHING"""),
        ("credentials", f"""
            INSERT INTO {tables['Credential']} ({mirror}, identifier, status, member_id, channel_id, store_id, offer_ids,
                                               annotations)
            SELECT {mirror_values}, {_credential_code(n)}, 'open', {_id(n)}, {_id(_credential_channel(n))}, NULL,
                   ARRAY[{_id(_credential_offer(n, size))}], '{{}}'
            FROM generate_series(1, {size.members}) n ON CONFLICT DO NOTHING"""),
        ("deliveries of redemptions", _delivery_insert(
            source=f"generate_series(1, {size.redemptions}) n WHERE {redemption_forwarded}", kind=1,
            event_type=OFFER_STATE_REDEEMED, occurred=redeemed_at, member=member_of_redemption,
            payload_properties=f"""jsonb_build_object('credential_identifier', {_credential_code(member_of_redemption)},
                'offer_state_id', NULL, 'store_number', 'D' || {redemption_store},
                'campaign', jsonb_build_object('xid', {_xid(redemption_offer, redemption_channel)},
                    'name', {_offer_name(redemption_offer)}, 'external_id', '', 'id', {_id(redemption_offer)},
                    'distribution_channel_id', {_id(redemption_channel)}))""",
        )),
        ("deliveries of points redemptions", _delivery_insert(
            source=f"generate_series(1, {size.points_redemptions}) n", kind=2, event_type=POINTS_REDEEMED,
            occurred=points_at, member=member_of_points,
            payload_properties=f"""jsonb_build_object('points_debit', {points},
                'enrollment', jsonb_build_object('id', {_id(member_of_points)},
                                                 'enrollment_external_id', 'demo-enrollment-' || {member_of_points}),
                'reward_state', jsonb_build_object('id', {_id('n')}, 'offer_state_id', NULL,
                    'credential_identifier', '', 'issued_point_value', {points}, 'created_at', {_rfc3339(points_at)}))""",
        )),
        ("deliveries of issuances", _delivery_insert(
            source=f"generate_series(1, {size.issuances}) n WHERE {issued}", kind=4, event_type=OFFER_STATE_CREATED,
            occurred=f"({issued_at} + interval '2 seconds')", member="n",
            payload_properties=f"""jsonb_build_object('offer_state', jsonb_build_object('offer_state_id', NULL,
                'credential_identifier', {_credential_code('n')}, 'expiration', '',
                'campaign', jsonb_build_object('id', {_id(issuance_offer)},
                    'xid', {_xid(issuance_offer, _credential_channel('n'))}, 'name', {_offer_name(issuance_offer)},
                    'external_id', '', 'offer', jsonb_build_object('id', {_id(issuance_offer)},
                    'name', {_offer_name(issuance_offer)}, 'description', 'A demo offer'))))""",
        )),
        ("delivery attempts", _attempts_insert()),
        ("redemptions", f"""
            INSERT INTO {tables['Redemption']} (received_at, state, attempts, failure, updated_at, delivery_id, dedup_key,
                endpoint_id, channel_id, credential_id, offer_id, offer_ids, xid, store_id, redeemed_at, credential_status,
                sf_uid, sf_ac, conv_ids, forwarded_at)
            SELECT received, CASE WHEN d.id IS NULL THEN 'failed' ELSE 'forwarded' END, 1,
                   CASE WHEN d.id IS NULL THEN 'credential ' || {_id(member_of_redemption)} || ' is not in the mirror: sync '
                        'credentials, then retry' ELSE '' END,
                   received, d.id, key::uuid, NULL, {_id(redemption_channel)}, {_id(member_of_redemption)},
                   {_id(redemption_offer)}, ARRAY[{_id(redemption_offer)}],
                   {_xid(redemption_offer, redemption_channel)}, {_id(redemption_store)}, {redeemed_at}, 'redeemed',
                   {_member_identifier(member_of_redemption)}, '', '{{}}', d.created_at
            FROM (SELECT n, {_uuid(1, n)} AS key, {redeemed_at} + interval '1 second' AS received
                  FROM generate_series(1, {size.redemptions}) n) AS rows
            LEFT JOIN {Delivery._meta.db_table} d ON d.external_event_id = rows.key
            ON CONFLICT DO NOTHING"""),
        ("points redemption notifications", f"""
            INSERT INTO {tables['Notification']} (received_at, state, attempts, failure, updated_at, delivery_id, event_id,
                event_name, endpoint_id, occurred_at, payload, processed_at)
            SELECT occurred + interval '1 second', 'forwarded', 1, '', occurred + interval '2 seconds', d.id, key,
                   '{POINTS_NOTIFICATION}', NULL, occurred,
                   jsonb_build_object('event_name', '{POINTS_NOTIFICATION}', 'id', key, 'created_at', {_rfc3339('occurred')},
                       'data', jsonb_build_object('points_redeemed', {points},
                           'member', jsonb_build_object('id', {_id(member_of_points)},
                               'identifier', {_member_identifier(member_of_points)},
                               'enrollment', jsonb_build_object('id', {_id(member_of_points)},
                                   'external_id', 'demo-enrollment-' || {member_of_points})),
                           'reward_state', jsonb_build_object('id', {_id(n)}, 'issued_point_value', {points},
                               'status', 'completed', 'created_at', {_rfc3339('occurred')}))),
                   occurred + interval '2 seconds'
            FROM (SELECT n, {_uuid(2, n)} AS key, {points_at} AS occurred FROM generate_series(1, {size.points_redemptions}) n)
                 AS rows
            LEFT JOIN {Delivery._meta.db_table} d ON d.external_event_id = rows.key
            ON CONFLICT DO NOTHING"""),
        ("issuance requests", f"""
            INSERT INTO {tables['IssuanceRequest']} (idempotency_key, batch_id, member_id, channel_id, offer_ids, state,
                credential_id, awaiting_creation, code, reason, events, attempts, requested_by_id, created_at, finished_at)
            SELECT {_uuid(3, n)}::uuid, NULL, {_id(n)}, {_id(_credential_channel(n))}, ARRAY[{_id(issuance_offer)}],
                   state, CASE WHEN state = 'issued' THEN {_id(n)} END, false,
                   CASE WHEN state = 'issued' THEN {_credential_code(n)} ELSE '' END,
                   CASE state WHEN 'refused' THEN 'Sparkfly refused: the member already holds this offer'
                              WHEN 'failed' THEN 'Sparkfly answered 503: Service Unavailable; submit again to retry'
                              ELSE '' END,
                   CASE WHEN state = 'issued' THEN 'forwarded' ELSE 'pending' END, 1, NULL, issued_at,
                   CASE WHEN state <> 'pending' THEN issued_at + interval '2 seconds' END
            FROM (SELECT n, {issued_at} AS issued_at,
                         CASE WHEN {issued} THEN 'issued' WHEN n % 100 < 94 THEN 'refused'
                              WHEN n % 100 < 97 THEN 'failed' ELSE 'pending' END AS state
                  FROM generate_series(1, {size.issuances}) n) AS rows
            ON CONFLICT DO NOTHING"""),
    ]


def _attempts_insert() -> str:
    """Attempts of the demo deliveries that have none yet: every failed, dead or expired one,
    and one delivered in ten (an attempt log of a million successes shows nothing new)."""
    answers = ", ".join(
        f"('{status}', {code}, '{body}', '{outcome}', {count})" for status, (code, body, outcome, count) in _ANSWERS.items()
    )
    return f"""
        INSERT INTO {DeliveryAttempt._meta.db_table} (delivery_id, started_at, duration_ms, status_code, response_body,
                                                     error, outcome)
        SELECT d.id, d.created_at + (try - 1) * interval '1 minute', 80 + (d.id % 400),
               CASE WHEN try = a.tries THEN a.code ELSE 503 END,
               CASE WHEN try = a.tries THEN a.body ELSE '{{"message": "Service Unavailable"}}' END,
               '', CASE WHEN try = a.tries THEN a.outcome ELSE 'retry' END
        FROM {Delivery._meta.db_table} d
        JOIN (VALUES {answers}) AS a(status, code, body, outcome, tries) ON a.status = d.status
        CROSS JOIN LATERAL generate_series(1, a.tries) AS try
        WHERE d.external_event_id LIKE '{DEMO_UUID_PREFIX}%'
          AND (d.status <> 'delivered' OR d.id % 10 = 0)
          AND NOT EXISTS (SELECT 1 FROM {DeliveryAttempt._meta.db_table} e WHERE e.delivery_id = d.id)
    """


def _escaped(statement: str) -> str:
    """The statements write ``%`` for modulo and LIKE; the driver wants it doubled beside ``%(name)s``."""
    return re.sub(r"%(?!\()", "%%", statement)


def _area_codes() -> list[str]:
    """North American area codes whose 555 numbers ``phonenumbers`` takes as valid."""
    return [
        str(code) for code in range(201, 990)
        if phonenumbers.is_valid_number(phonenumbers.parse(f"+1{code}5550123", None))
    ]


@transaction.atomic
def demo_seed(*, size: DemoSize, report: Callable[[str, int, float], None] = lambda what, rows, seconds: None) -> None:
    """Fill the database with demo data of ``size`` (see the module docstring); ``report`` is
    told each table's new rows and the seconds they took."""
    import time

    from django.utils import timezone

    area_codes = _area_codes()
    params = {
        "base": DEMO_ID_BASE, "now": timezone.now(), "days": size.days, "area_codes": area_codes,
        "area_code_count": len(area_codes),
    }
    with connection.cursor() as cursor:
        # Bulk loading: a larger sort memory for the joins, no wait on the WAL flush per statement.
        cursor.execute("SET LOCAL work_mem = '256MB'")
        cursor.execute("SET LOCAL synchronous_commit = off")
        # Foreign keys checked at each statement's end, not at commit: an index cannot be built
        # on a table with checks still pending (see _indexes_built_after).
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
        planned = _planned_rows(size)
        for what, statement in _statements(size):
            started = time.perf_counter()
            table = re.search(r"INSERT INTO (\w+)", statement).group(1)
            with _indexes_built_after(cursor, table, adding=planned.get(what, 0)):
                cursor.execute(_escaped(statement), params)
                added = cursor.rowcount
            # Fresh statistics: the next statements join what was just inserted.
            cursor.execute(f"ANALYZE {table}")
            report(what, added, time.perf_counter() - started)


def _planned_rows(size: DemoSize) -> dict[str, int]:
    """The big inserts' sizes, by the name ``_statements`` gives them."""
    return {
        "members": size.members, "loyalty enrollments": size.members, "credentials": size.members,
        "deliveries of redemptions": size.redemptions, "redemptions": size.redemptions,
        "deliveries of points redemptions": size.points_redemptions, "points redemption notifications": size.points_redemptions,
        "deliveries of issuances": size.issuances, "issuance requests": size.issuances,
    }


@contextmanager
def _indexes_built_after(cursor, table: str, *, adding: int):
    """Drop ``table``'s plain indexes for the insert and build them again after, when it adds
    at least as many rows as the table holds: one sorted build is several times faster than
    updating half a dozen indexes row by row. Unique and primary-key indexes stay (the inserts'
    ON CONFLICT needs them). All inside the seed's transaction: a failure restores them."""
    cursor.execute("SELECT greatest(reltuples, 0) FROM pg_class WHERE oid = %s::regclass", [table])
    if adding < max(1, cursor.fetchone()[0]) or adding < 10_000:
        yield
        return
    cursor.execute(
        """
        SELECT i.relname, pg_get_indexdef(x.indexrelid) FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid
        WHERE x.indrelid = %s::regclass AND NOT x.indisunique AND NOT x.indisprimary
          AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = x.indexrelid)
        """,
        [table],
    )
    indexes = cursor.fetchall()
    for name, _ in indexes:
        cursor.execute(f'DROP INDEX "{name}"')
    yield
    for _, definition in indexes:
        cursor.execute(definition)


@transaction.atomic
def demo_reset() -> dict[str, int]:
    """Delete every demo row (and nothing else); returns rows deleted per table."""
    deliveries = f"SELECT id FROM {Delivery._meta.db_table} WHERE external_event_id LIKE '{DEMO_UUID_PREFIX}%'"
    statements = [
        (DeliveryAttempt, f"delivery_id IN ({deliveries})"),
        (Redemption, f"dedup_key::text LIKE '{DEMO_UUID_PREFIX}%'"),
        (Notification, f"event_id LIKE '{DEMO_UUID_PREFIX}%'"),
        (IssuanceRequest, "member_id >= %(base)s AND idempotency_key::text LIKE '" + DEMO_UUID_PREFIX + "%'"),
        (Delivery, f"external_event_id LIKE '{DEMO_UUID_PREFIX}%'"),
        *((model, "sparkfly_id >= %(base)s") for model in (
            Credential, LoyaltyEnrollment, Member, Offer, Channel, Store, Merchant, LoyaltyProgram,
        )),
        (OfferChannel, "offer_id >= %(base)s"),
    ]
    deleted = {}
    with connection.cursor() as cursor:
        for model, where in statements:
            cursor.execute(_escaped(f"DELETE FROM {model._meta.db_table} WHERE {where}"), {"base": DEMO_ID_BASE})
            deleted[model._meta.verbose_name_plural] = cursor.rowcount
    return deleted

"""The dashboard's daily rollups: redemptions, issuances and points redeemed per day, program and
slice (totals, per offer, per store) in ``DailyActivity``; deliveries to Attentive per day of
creation, status and forwarding-delay bucket in ``DailyDeliveries``. The dashboard sums a few
thousand index entries instead of reading a million records on every view (measured with a
million redemptions and a million deliveries: a year's delivery health read from ``Delivery``
took over a second; its top stores with the names in the aggregate, 800 ms).

What counts (issue 6, the dashboard):

* a redemption is a ``Redemption`` (one conversion callback), on its ``redeemed_at`` day;
* an issuance is an ``IssuanceRequest`` in state issued, on its ``finished_at`` day, once per
  offer of its ``offer_ids``;
* points redeemed are the ``points_redeemed`` of ``loyalty.enrollment.points.redeemed``
  notifications (the verified document is stored whole in ``Notification.payload``; its
  ``data`` passed ``PointsRedeemedData``), on their ``occurred_at`` day (``received_at`` when
  the event carried no time).

Days are the portal's (``TIME_ZONE``). A redemption or issuance belongs to every program its
member is enrolled in (redemption → credential → member → enrollments), points to their
enrollment's program; program 0 counts every record once, enrolled or not.

How a refresh works (``rollups_refresh``): it recomputes whole days, never adjusts counters, so
a refresh is always exact for the days it touches and running it twice changes nothing. The
touched days are the days of records that arrived (``received_at``) or were issued
(``finished_at``) since the last refresh. Those are the times the records' transactions set
just before committing; the window reaches ``COMMIT_LAG`` further back so a record whose
transaction committed a moment after the previous refresh read is not missed. (An id
watermark, as first planned, misses both: ids commit out of order, and an issuance request
becomes issued long after its id was seen.) In one transaction, under an advisory lock so two
refreshes never interleave: delete the touched days, then one INSERT … SELECT … GROUP BY per
source, which reads the touched days' records through an index and their members' programs
through theirs. Readers see the old days until the commit. What a minute refresh costs follows
what changed (measured at a million members and redemptions: 20 new records of each kind,
~170 ms, most of it summing the month again), not the size of the tables (every step indexed,
including the questions "what arrived since" and "which days are open").

The same figures per calendar month (``MonthlyActivity``): each month touched is summed again
from its days in the refresh's transaction (every month on a full rebuild), so a month always
equals the sum of its days. A range reads its whole months from there and only the days at its
edges from the days (``range_grains``): a year is eleven or twelve months and at most two
partial months of days, not 365 days of every offer and store (measured with a million
redemptions: a year's top stores summed 180k daily rows).

Deliveries change after they are created (tried, delivered, dead, expired): the days of
deliveries pending or failed at a refresh are recomputed by the next one too (``open_days``),
so a delivery's last change is counted within a minute.

What a touched-days refresh cannot see: an enrollment or credential mirrored after its
member's records were rolled up (the mirror sync writes them; the records did not change), and
an administrator's replay of a delivery that was final and got through again within the minute.
The nightly full refresh (``portal.tasks.rebuild_rollups``, or ``manage.py refresh_rollups
--all``) takes those in — except for the deliveries of days past the retention window
(``delivery_days_kept_from``): retention deleted some of them, and their counts are final.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from attentive_sync.models import Delivery
from portal.models import DailyActivity, DailyDeliveries, MonthlyActivity, RollupRefresh
from sparkfly_sync.models import Credential, IssuanceRequest, LoyaltyEnrollment, Notification, Redemption
from sparkfly_sync.serializers import POINTS_REDEEMED

logger = logging.getLogger(__name__)

# Longer than any transaction that records a redemption, a notification or an issuance (a
# webhook request, one step of an issuance) takes between setting its time and committing.
COMMIT_LAG = timedelta(minutes=5)

_LOCK_KEY = 0x726F6C6C7570  # "rollup": one refresh at a time, whoever runs it

_TABLES = {
    "rollup": DailyActivity._meta.db_table,
    "monthly": MonthlyActivity._meta.db_table,
    "delivery_rollup": DailyDeliveries._meta.db_table,
    "delivery": Delivery._meta.db_table,
    "redemption": Redemption._meta.db_table,
    "credential": Credential._meta.db_table,
    "enrollment": LoyaltyEnrollment._meta.db_table,
    "issuance": IssuanceRequest._meta.db_table,
    "notification": Notification._meta.db_table,
}

# {window}: either nothing (every day) or a WHERE clause naming the days' bounds (``_recompute``).
# A record counts in each program of its member once however many enrollments the member holds
# in it: through the member's first enrollment in the program (NOT EXISTS an earlier one). Plain
# joins, so the planner probes the indexes for a day's few thousand records and hashes whole
# tables on a full rebuild. (A DISTINCT over every enrollment, as first written, was built on
# every refresh: with a hash of every credential, 0.8 s a minute at a million members for 20
# new redemptions. A LATERAL DISTINCT per record doubled the full rebuild's time.)
_REDEMPTIONS = """
WITH records AS (
    SELECT (r.redeemed_at AT TIME ZONE %(tz)s)::date AS day, r.offer_id, r.store_id, r.credential_id
    FROM {redemption} r {window}
),
per_program AS (
    SELECT day, offer_id, store_id, 0::bigint AS program_id FROM records
    UNION ALL
    SELECT r.day, r.offer_id, r.store_id, mp.program_id
    FROM records r
    JOIN {credential} c ON c.sparkfly_id = r.credential_id
    JOIN {enrollment} mp ON mp.member_id = c.member_id AND mp.program_id IS NOT NULL
    WHERE NOT EXISTS (
        SELECT FROM {enrollment} e WHERE e.member_id = mp.member_id AND e.program_id = mp.program_id AND e.id < mp.id
    )
)
INSERT INTO {rollup} (day, program_id, dimension, key, redemptions, issuances, points_redeemed)
SELECT p.day, p.program_id, d.dimension, d.key, count(*), 0, 0
FROM per_program p
CROSS JOIN LATERAL (VALUES ('total', 0::bigint), ('offer', p.offer_id), ('store', p.store_id)) AS d(dimension, key)
WHERE d.key IS NOT NULL
GROUP BY 1, 2, 3, 4
"""

# ``issued`` is inlined (used once): the window's ranges read the partial index of issued
# requests by finished_at.
_ISSUANCES = """
WITH issued AS (
    SELECT * FROM {issuance} WHERE state = %(issued)s AND finished_at IS NOT NULL
),
records AS (
    SELECT (i.finished_at AT TIME ZONE %(tz)s)::date AS day, i.member_id, unnest(i.offer_ids) AS offer_id
    FROM issued i {window}
),
per_program AS (
    SELECT day, offer_id, 0::bigint AS program_id FROM records
    UNION ALL
    SELECT r.day, r.offer_id, mp.program_id
    FROM records r
    JOIN {enrollment} mp ON mp.member_id = r.member_id AND mp.program_id IS NOT NULL
    WHERE NOT EXISTS (
        SELECT FROM {enrollment} e WHERE e.member_id = mp.member_id AND e.program_id = mp.program_id AND e.id < mp.id
    )
)
INSERT INTO {rollup} (day, program_id, dimension, key, redemptions, issuances, points_redeemed)
SELECT p.day, p.program_id, d.dimension, d.key, 0, count(*), 0
FROM per_program p
CROSS JOIN LATERAL (VALUES ('total', 0::bigint), ('offer', p.offer_id)) AS d(dimension, key)
GROUP BY 1, 2, 3, 4
ON CONFLICT (day, program_id, dimension, key) DO UPDATE SET issuances = EXCLUDED.issuances
"""

# The payload is the verified document as received: ``data.points_redeemed`` and
# ``data.member.enrollment.id`` were checked (digits or a JSON integer) before it was stored;
# the pattern keeps anything else from failing the whole refresh on a cast.
_POINTS = """
WITH points AS (
    SELECT * FROM {notification} WHERE event_name = %(points_event)s
),
records AS (
    SELECT (coalesce(n.occurred_at, n.received_at) AT TIME ZONE %(tz)s)::date AS day,
           CASE WHEN n.payload #>> '{{data,points_redeemed}}' ~ '^\\s*[0-9]{{1,18}}\\s*$'
                THEN (n.payload #>> '{{data,points_redeemed}}')::bigint ELSE 0 END AS points,
           CASE WHEN n.payload #>> '{{data,member,enrollment,id}}' ~ '^\\s*[0-9]{{1,18}}\\s*$'
                THEN (n.payload #>> '{{data,member,enrollment,id}}')::bigint END AS enrollment_id
    FROM points n {window}
),
per_program AS (
    SELECT day, points, 0::bigint AS program_id FROM records
    UNION ALL
    SELECT r.day, r.points, e.program_id
    FROM records r JOIN {enrollment} e ON e.sparkfly_id = r.enrollment_id
    WHERE e.program_id IS NOT NULL
)
INSERT INTO {rollup} (day, program_id, dimension, key, redemptions, issuances, points_redeemed)
SELECT day, program_id, 'total', 0, 0, 0, sum(points)
FROM per_program
GROUP BY 1, 2
ON CONFLICT (day, program_id, dimension, key) DO UPDATE SET points_redeemed = EXCLUDED.points_redeemed
"""

_DELIVERIES = """
INSERT INTO {delivery_rollup} (day, status, delay_bucket, deliveries)
SELECT (d.created_at AT TIME ZONE %(tz)s)::date, d.status,
       CASE WHEN d.status = %(delivered)s AND d.delivered_at IS NOT NULL
            THEN floor(ln(greatest(extract(epoch FROM d.delivered_at - d.occurred_at) * 1000, 1)) / ln(%(ratio)s))::int
       END,
       count(*)
FROM {delivery} d {window}
GROUP BY 1, 2, 3
"""

# One range of instants [{lo}, {hi}) of each source, in the statement's text as constants: the
# planner then estimates a day's few thousand rows from the column's statistics and reads them
# through the index. (A join with an array of bounds, as first written, hid them: it guessed a
# ninth of the table per day and read whole tables.)
_WINDOWS = {
    "redemption": "r.redeemed_at >= {lo} AND r.redeemed_at < {hi}",
    "delivery": "d.created_at >= {lo} AND d.created_at < {hi}",
    "issuance": "i.finished_at >= {lo} AND i.finished_at < {hi}",
    # The expression of the partial index notification_points_occurred: a day's events, not all
    # received since (points reported late for an old day read a day, not the months since).
    "notification": "coalesce(n.occurred_at, n.received_at) >= {lo} AND coalesce(n.occurred_at, n.received_at) < {hi}",
}

# {window}: nothing (every month) or a join with the first days of the months to sum.
_MONTHS = """
INSERT INTO {monthly} (month, program_id, dimension, key, redemptions, issuances, points_redeemed)
SELECT date_trunc('month', a.day)::date, a.program_id, a.dimension, a.key,
       sum(a.redemptions), sum(a.issuances), sum(a.points_redeemed)
FROM {rollup} a {window}
GROUP BY 1, 2, 3, 4
"""

_MONTH_WINDOW = (
    "JOIN unnest(%(months)s::date[]) AS m(month) ON a.day >= m.month AND a.day < (m.month + interval '1 month')::date"
)

_TOUCHED_DAYS = """
SELECT (redeemed_at AT TIME ZONE %(tz)s)::date FROM {redemption} WHERE received_at > %(since)s
UNION
SELECT (finished_at AT TIME ZONE %(tz)s)::date FROM {issuance} WHERE state = %(issued)s AND finished_at > %(since)s
UNION
SELECT (coalesce(occurred_at, received_at) AT TIME ZONE %(tz)s)::date FROM {notification}
WHERE event_name = %(points_event)s AND received_at > %(since)s
"""

_TOUCHED_DELIVERY_DAYS = """
SELECT (created_at AT TIME ZONE %(tz)s)::date FROM {delivery} WHERE created_at > %(since)s
UNION
SELECT unnest(%(open_days)s::date[])
"""

# Deliveries change after they are created (tried, retried, delivered, dead, expired) while
# they are pending or failed: their days are recomputed until they are not (the status index
# finds the few that are).
_OPEN_DAYS = """
SELECT DISTINCT (created_at AT TIME ZONE %(tz)s)::date FROM {delivery} WHERE status IN (%(pending)s, %(failed)s)
"""


def day_bounds(day: date) -> tuple[datetime, datetime]:
    """The instants a day of the portal's time zone starts and ends (23 or 25 hours at a DST change)."""
    zone = ZoneInfo(settings.TIME_ZONE)
    return datetime.combine(day, time.min, zone), datetime.combine(day + timedelta(days=1), time.min, zone)


def month_start(day: date) -> date:
    return day.replace(day=1)


def next_month(day: date) -> date:
    """The first day of the month after ``day``'s."""
    return (day.replace(day=1) + timedelta(days=32)).replace(day=1)


@dataclass(frozen=True)
class RangeGrains:
    """A range of days as the rollups read it: its whole calendar months from ``MonthlyActivity``
    and the days before the first and after the last of them from ``DailyActivity``."""

    days: tuple[tuple[date, date], ...]  # at most two (first, last) day ranges, inclusive
    months: tuple[date, date] | None  # first days of the first and the last whole month, inclusive


def range_grains(start: date, end: date) -> RangeGrains:
    """Split the days ``start``…``end`` (inclusive) into whole months and the days around them."""
    first = start if start.day == 1 else next_month(start)  # the first whole month starts here
    last = end if (end + timedelta(days=1)).day == 1 else month_start(end) - timedelta(days=1)  # …the last ends here
    if first > last:
        return RangeGrains(days=((start, end),), months=None)
    days = []
    if start < first:
        days.append((start, first - timedelta(days=1)))
    if last < end:
        days.append((last + timedelta(days=1), end))
    return RangeGrains(days=tuple(days), months=(first, month_start(last)))


@transaction.atomic
def rollups_refresh(*, days: list[date] | None = None, everything: bool = False) -> list[date] | None:
    """Bring the daily rollups up to date and return the days recomputed (None: all of them).

    ``days`` recomputes those days; ``everything`` rebuilds the whole tables; neither recomputes
    the days of records that changed since the last refresh (all days on the first refresh).
    """
    started = timezone.now()
    params = {
        "tz": settings.TIME_ZONE,
        "issued": IssuanceRequest.State.ISSUED,
        "points_event": POINTS_REDEEMED,
        "delivered": Delivery.Status.DELIVERED,
        "pending": Delivery.Status.PENDING,
        "failed": Delivery.Status.FAILED,
        "ratio": DailyDeliveries.DELAY_RATIO,
    }
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_LOCK_KEY])
        state = RollupRefresh.objects.select_for_update().first()
        cursor.execute(_OPEN_DAYS.format(**_TABLES), params)
        open_days = sorted(row[0] for row in cursor.fetchall())
        if everything or (days is None and state is None):
            cursor.execute(f"DELETE FROM {_TABLES['rollup']}")
            cursor.execute(f"DELETE FROM {_TABLES['monthly']}")
            for statement, _ in _ACTIVITY:
                cursor.execute(statement.format(**_TABLES, window=""), params)
            _rebuild_delivery_days(cursor, params, delivery_days_kept_from())
            cursor.execute(_MONTHS.format(**_TABLES, window=""))
            days = None
        else:
            delivery_days = days
            if days is None:
                touched = {**params, "since": state.refreshed_at - COMMIT_LAG, "open_days": state.open_days}
                cursor.execute(_TOUCHED_DAYS.format(**_TABLES), touched)
                days = sorted(row[0] for row in cursor.fetchall())
                cursor.execute(_TOUCHED_DELIVERY_DAYS.format(**_TABLES), touched)
                delivery_days = sorted(row[0] for row in cursor.fetchall())
            _recompute(cursor, params, days, _TABLES["rollup"], _ACTIVITY)
            _recompute_months(cursor, days)
            if kept_from := delivery_days_kept_from():
                final = set(_counted_days_before(cursor, kept_from))
                delivery_days = [day for day in delivery_days if day not in final]
            _recompute(cursor, params, delivery_days, _TABLES["delivery_rollup"], _DELIVERY)
            days = sorted(set(days) | set(delivery_days))
    count = len(days) if days is not None else DailyActivity.objects.dates("day", "day").count()
    if state is None:
        state = RollupRefresh(refreshed_at=started)
    state.refreshed_at, state.days, state.open_days = started, count, open_days
    state.save()
    logger.info("daily rollups refreshed: %s", "every day" if days is None else f"{len(days)} day(s)")
    return days


# (statement, alias of its windowed source). The delivery rollups are recomputed on days of
# their own: a delivery changes when it is tried, not when a redemption arrives.
_ACTIVITY = ((_REDEMPTIONS, "redemption"), (_ISSUANCES, "issuance"), (_POINTS, "notification"))
_DELIVERY = ((_DELIVERIES, "delivery"),)


def delivery_days_kept_from(now: datetime | None = None) -> date | None:
    """The first day whose deliveries are all still there (None: every day's are).

    Retention (``portal.retention``) deletes delivered deliveries created more than
    RETENTION_DAYS ago, after the rollups counted them: a day before this one may have lost
    some, and recomputing it from what is left would erase its history. Its counts are final
    anyway (deliveries that old are delivered, dead or expired), so such a day, once counted,
    is left as it is (one never counted, as on the first refresh of old data, is counted)."""
    if settings.RETENTION_DAYS <= 0:
        return None
    cutoff = (now or timezone.now()) - timedelta(days=settings.RETENTION_DAYS)
    return timezone.localdate(cutoff) + timedelta(days=1)


def _counted_days_before(cursor, day: date) -> list[date]:
    cursor.execute(f"SELECT DISTINCT day FROM {_TABLES['delivery_rollup']} WHERE day < %s", [day])
    return [row[0] for row in cursor.fetchall()]


def _rebuild_delivery_days(cursor, params: dict, kept_from: date | None) -> None:
    """Rebuild the delivery rollups of every day but those before ``kept_from`` already counted."""
    final = _counted_days_before(cursor, kept_from) if kept_from else []
    cursor.execute(f"DELETE FROM {_TABLES['delivery_rollup']} WHERE NOT (day = ANY(%s::date[]))", [final])
    window = "WHERE NOT ((d.created_at AT TIME ZONE %(tz)s)::date = ANY(%(final)s::date[]))"
    cursor.execute(_DELIVERIES.format(**_TABLES, window=window), {**params, "final": final})


def _recompute(cursor, params: dict, days: list[date], table: str, statements) -> None:
    """Replace ``days`` of ``table`` with what ``statements`` count for them."""
    if not days:
        return
    cursor.execute(f"DELETE FROM {table} WHERE day = ANY(%s)", [list(days)])
    ranges = _ranges(days)
    windowed = {**params}
    for n, (lo, hi) in enumerate(ranges):
        windowed[f"lo{n}"], windowed[f"hi{n}"] = lo, hi
    for statement, source in statements:
        bounds = (_WINDOWS[source].format(lo=f"%(lo{n})s", hi=f"%(hi{n})s") for n in range(len(ranges)))
        window = "WHERE " + " OR ".join(f"({condition})" for condition in bounds)
        cursor.execute(statement.format(**_TABLES, window=window), windowed)


def _ranges(days: list[date]) -> list[tuple[datetime, datetime]]:
    """The instants of ``days`` in as few ranges as they make (consecutive days in one)."""
    ranges: list[tuple[datetime, datetime]] = []
    for lo, hi in sorted(day_bounds(day) for day in set(days)):
        if ranges and ranges[-1][1] == lo:
            ranges[-1] = (ranges[-1][0], hi)
        else:
            ranges.append((lo, hi))
    return ranges


def _recompute_months(cursor, days: list[date]) -> None:
    """Sum again, from their days, the months of ``days`` (just recomputed)."""
    months = sorted({month_start(day) for day in days})
    if not months:
        return
    cursor.execute(f"DELETE FROM {_TABLES['monthly']} WHERE month = ANY(%s)", [months])
    cursor.execute(_MONTHS.format(**_TABLES, window=_MONTH_WINDOW), {"months": months})

"""``/metrics``: the portal's state for Prometheus, read from PostgreSQL at scrape time.

Why from the database and not counters in memory: the portal runs as several gunicorn
processes and several workers on several machines. In-process counters would each see a
slice and reset on every restart (and gunicorn replaces workers every GUNICORN_MAX_REQUESTS);
the tables already hold every fact, the same for every process that answers a scrape. So one
collector (``PortalCollector``) runs a handful of cheap queries per scrape, and any web
process, behind any load balancer, answers with the same numbers.

Counters and gauges: the tables the facts live in are pruned (README "Retention"), and a
counter must never go down. So:

* callbacks received and rejected are true counters (``portal_callbacks_total``): a minute's
  job counts the requests per day into ``DailyCallbacks`` and never lowers a count when old
  requests are deleted (``portal.callback_counts``), so a scrape sums a few hundred rows;
* deliveries by status and the forwarding-delay histogram come from the dashboard's daily
  rollups (``portal.models.DailyDeliveries``, refreshed every minute), the same figures the
  dashboard shows, so the scrape reads a few thousand rollup rows, not a million deliveries.
  The delay is the rollup's: delivered_at − occurred_at (the event's own time, so Sparkfly's
  own delay before its callback is in it), bucketed within 10 % (the rollup's 1.1× buckets); a
  rollup bucket counts under ``le`` only when all of it is at most ``le``.

A counters table incremented in the webhook's own transaction would be exact to the request,
at the price of one hot row updated by every callback (concurrent ingests would queue on its
lock); the minute's count costs the webhook nothing. Deliveries are gauges: a delivery moves
between statuses (pending → failed → delivered), so its status count goes up and down.

Everything else is a point-in-time gauge: the job queue, the deliveries and records waiting,
the age of the oldest of each, mirror sync ages, worker heartbeats, the alert's rules.

Access: loopback callers (that came through no proxy) and callers with
``Authorization: Bearer <METRICS_TOKEN>``; anyone else gets 403.
"""

from __future__ import annotations

import hmac
import ipaddress

from django.conf import settings
from django.db import connection
from django.http import HttpResponse, HttpResponseForbidden
from django.utils import timezone
from django.views.decorators.http import require_GET
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from portal.models import DailyDeliveries

# Forwarding-delay histogram bounds, seconds: from "at once" to Attentive's 12-hour cutoff.
DELAY_BOUNDS = (0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 4 * 3600, 8 * 3600, 12 * 3600)

# What a rejected callback's answer means (sparkfly_sync.webhooks).
REJECTION_REASONS = {
    400: "invalid",
    401: "unauthenticated",
    403: "forbidden",
    404: "unknown_endpoint",
    405: "method_not_allowed",
    410: "endpoint_disabled",
    413: "too_large",
    415: "unsupported_media_type",
}

_STATEMENTS = {
    # Index-only over inbound_outcome_recent (outcome, received_at); rejected ones are few.
    # Counted per day every minute (portal.callback_counts): a few hundred rows.
    "callbacks": "SELECT outcome, sum(requests) FROM portal_dailycallbacks GROUP BY outcome",
    "rejections": (
        "SELECT kind, status_code, sum(requests) FROM portal_dailycallbacks "
        "WHERE outcome = 'rejected' GROUP BY kind, status_code"
    ),
    "deliveries": "SELECT status, sum(deliveries) FROM portal_dailydeliveries GROUP BY status",
    "delays": (
        "SELECT delay_bucket, sum(deliveries) FROM portal_dailydeliveries "
        "WHERE status = 'delivered' AND delay_bucket IS NOT NULL GROUP BY delay_bucket"
    ),
    "rollups_age": "SELECT extract(epoch FROM now() - refreshed_at) FROM portal_rolluprefresh ORDER BY id LIMIT 1",
    # Not yet through: few rows (delivery_due index), however many have been delivered.
    "waiting_deliveries": (
        "SELECT status, count(*), extract(epoch FROM now() - min(created_at)) FROM attentive_sync_delivery "
        "WHERE status IN ('pending', 'failed') GROUP BY status"
    ),
    "jobs": (
        "SELECT queue_name, status, count(*) FROM procrastinate_jobs "
        "WHERE status IN ('todo', 'doing') GROUP BY queue_name, status"
    ),
    # A job waits since it was due: its schedule, or when it was deferred.
    "oldest_jobs": (
        "SELECT job.queue_name, extract(epoch FROM now() - min(coalesce(job.scheduled_at, deferred.at))) "
        "FROM procrastinate_jobs job LEFT JOIN LATERAL ("
        "  SELECT min(at) AS at FROM procrastinate_events WHERE job_id = job.id AND type = 'deferred'"
        ") deferred ON true "
        "WHERE job.status = 'todo' AND (job.scheduled_at IS NULL OR job.scheduled_at <= now()) "
        "GROUP BY job.queue_name"
    ),
    "records": (
        "SELECT 'redemption', state, count(*), extract(epoch FROM now() - min(received_at)) "
        "FROM sparkfly_sync_redemption WHERE state IN ('queued', 'failed') GROUP BY state "
        "UNION ALL "
        "SELECT 'notification', state, count(*), extract(epoch FROM now() - min(received_at)) "
        "FROM sparkfly_sync_notification WHERE state IN ('queued', 'failed') GROUP BY state"
    ),
    "syncs": (
        "SELECT resource, "
        "  extract(epoch FROM now() - max(finished_at) FILTER (WHERE status = 'succeeded')), "
        "  (array_agg(status ORDER BY started_at DESC))[1] "
        "FROM sparkfly_sync_syncrun GROUP BY resource"
    ),
    "workers": (
        "SELECT count(*) FILTER (WHERE last_heartbeat >= now() - make_interval(secs => %(stalled)s)), "
        "  extract(epoch FROM now() - max(last_heartbeat)) FROM procrastinate_workers"
    ),
}


def _rows(cursor, name: str, params: dict | None = None) -> list[tuple]:
    cursor.execute(_STATEMENTS[name], params or {})
    return cursor.fetchall()


def oldest_waiting(cursor) -> tuple[float, float]:
    """Seconds the oldest job due has waited (any queue) and since the oldest delivery not
    through yet was recorded; 0 for none. The alert's backlog rule reads the same figures."""
    job_ages = [float(age or 0) for _, age in _rows(cursor, "oldest_jobs")]
    delivery_ages = [float(age or 0) for _, _, age in _rows(cursor, "waiting_deliveries")]
    return max(job_ages, default=0.0), max(delivery_ages, default=0.0)


def delay_histogram(bucket_counts: dict[int, int]) -> tuple[list[tuple[str, float]], float]:
    """Prometheus buckets (cumulative, by ``DELAY_BOUNDS``) and an estimated sum (seconds) from
    the rollup's buckets: bucket b holds delays in [r**b, r**(b+1)) ms (r = DELAY_RATIO)."""
    ratio = DailyDeliveries.DELAY_RATIO
    cumulative = [0] * len(DELAY_BOUNDS)
    total = estimated_sum = 0
    for bucket, count in bucket_counts.items():
        count = int(count)
        upper_seconds = ratio ** (bucket + 1) / 1000
        for index, bound in enumerate(DELAY_BOUNDS):
            if upper_seconds <= bound:
                cumulative[index] += count
        total += count
        estimated_sum += count * (ratio ** (bucket + 0.5) / 1000 if bucket > 0 else 0.0005)
    buckets = [(_bound_label(bound), value) for bound, value in zip(DELAY_BOUNDS, cumulative)]
    return buckets + [("+Inf", total)], estimated_sum


def _bound_label(bound: float) -> str:
    return str(float(bound))


class PortalCollector:
    """Every metric, computed at each scrape from one database connection."""

    def describe(self):
        return []  # computed at scrape time; nothing to check at registration

    def collect(self):
        from attentive_sync.jobs import STALLED_AFTER_SECONDS
        from portal.alerts import RULES, alert_state

        with connection.cursor() as cursor:
            callbacks = CounterMetricFamily(
                "portal_callbacks",
                "Webhook requests received, by what came of them: accepted, duplicate, ignored, rejected "
                "(counted every minute).",
                labels=["outcome"],
            )
            for outcome, count in _rows(cursor, "callbacks"):
                callbacks.add_metric([outcome], int(count))
            yield callbacks

            rejected = CounterMetricFamily(
                "portal_callbacks_rejected",
                "Webhook requests answered 4xx, by kind and reason (counted every minute).",
                labels=["kind", "reason", "status_code"],
            )
            for kind, status_code, count in _rows(cursor, "rejections"):
                reason = REJECTION_REASONS.get(status_code, f"http_{status_code}")
                rejected.add_metric([kind, reason, str(status_code)], int(count))
            yield rejected

            deliveries = GaugeMetricFamily(
                "portal_deliveries",
                "Deliveries to Attentive by status (pending, failed = retry scheduled, delivered, dead, "
                "expired), from the daily rollups (as of portal_rollups_age_seconds).",
                labels=["status"],
            )
            for status, count in _rows(cursor, "deliveries"):
                deliveries.add_metric([status], int(count))
            yield deliveries

            buckets, estimated_sum = delay_histogram(dict(_rows(cursor, "delays")))
            delay = HistogramMetricFamily(
                "portal_forwarding_delay_seconds",
                "Delivered events by delay from the event's occurredAt to Attentive's 2xx (rollup buckets; "
                "sum estimated within 10%).",
            )
            delay.add_metric([], buckets, estimated_sum)
            yield delay

            rollups_age = _rows(cursor, "rollups_age")
            if rollups_age:
                yield GaugeMetricFamily(
                    "portal_rollups_age_seconds",
                    "Seconds since the daily rollups (deliveries, forwarding delay) last took changes in.",
                    value=float(rollups_age[0][0]),
                )

            waiting = GaugeMetricFamily(
                "portal_deliveries_waiting",
                "Deliveries not through yet: pending (first try to come) or failed (retry scheduled).",
                labels=["status"],
            )
            oldest_waiting = 0.0
            counts = {"pending": 0, "failed": 0}
            for status, count, age in _rows(cursor, "waiting_deliveries"):
                counts[status] = count
                oldest_waiting = max(oldest_waiting, float(age or 0))
            for status, count in counts.items():
                waiting.add_metric([status], count)
            yield waiting
            yield GaugeMetricFamily(
                "portal_oldest_waiting_delivery_age_seconds",
                "Age of the oldest delivery not through yet (0: none).",
                value=oldest_waiting,
            )

            jobs = GaugeMetricFamily(
                "portal_jobs", "procrastinate jobs waiting (todo) or running (doing), per queue.",
                labels=["queue", "status"],
            )
            for queue, status, count in _rows(cursor, "jobs"):
                jobs.add_metric([queue, status], count)
            yield jobs
            oldest_job = GaugeMetricFamily(
                "portal_oldest_due_job_age_seconds",
                "Seconds the oldest job due to run has waited, per queue (queues with none due are absent).",
                labels=["queue"],
            )
            for queue, age in _rows(cursor, "oldest_jobs"):
                oldest_job.add_metric([queue], max(float(age or 0), 0.0))
            yield oldest_job

            records = GaugeMetricFamily(
                "portal_inbound_records",
                "Redemptions and notifications still queued for forwarding, or failed (see the admin).",
                labels=["kind", "state"],
            )
            oldest_record = GaugeMetricFamily(
                "portal_oldest_queued_record_age_seconds",
                "Age of the oldest redemption or notification still queued for forwarding.",
                labels=["kind"],
            )
            for kind, state, count, age in _rows(cursor, "records"):
                records.add_metric([kind, state], count)
                if state == "queued":
                    oldest_record.add_metric([kind], float(age or 0))
            yield records
            yield oldest_record

            sync_age = GaugeMetricFamily(
                "portal_sync_age_seconds",
                "Seconds since each resource's last successful mirror sync finished (absent: never).",
                labels=["resource"],
            )
            sync_failing = GaugeMetricFamily(
                "portal_sync_last_run_failed", "1 when the resource's latest mirror sync failed.", labels=["resource"]
            )
            for resource, age, last_status in _rows(cursor, "syncs"):
                if age is not None:
                    sync_age.add_metric([resource], float(age))
                sync_failing.add_metric([resource], 1 if last_status == "failed" else 0)
            yield sync_age
            yield sync_failing

            [(alive, heartbeat_age)] = _rows(cursor, "workers", {"stalled": STALLED_AFTER_SECONDS})
            yield GaugeMetricFamily(
                "portal_workers_alive", "procrastinate workers whose heartbeat is recent.", value=alive
            )
            if heartbeat_age is not None:
                yield GaugeMetricFamily(
                    "portal_worker_heartbeat_age_seconds", "Seconds since the newest worker heartbeat.",
                    value=float(heartbeat_age),
                )

        state = alert_state()
        firing = {problem["rule"] for problem in state.problems} if state else set()
        alert = GaugeMetricFamily(
            "portal_alert_firing", "1 while the alert rule fires (README \"Alerts\").", labels=["rule"]
        )
        for rule in RULES:
            alert.add_metric([rule], 1 if rule in firing else 0)
        yield alert
        if state and state.checked_at:
            yield GaugeMetricFamily(
                "portal_alert_checked_age_seconds", "Seconds since the alert rules were last checked.",
                value=max((timezone.now() - state.checked_at).total_seconds(), 0.0),
            )


_registry = CollectorRegistry(auto_describe=False)
_registry.register(PortalCollector())


def _allowed(request) -> bool:
    token = settings.METRICS_TOKEN
    if token:
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode()):
            return True
    # A request relayed by a proxy on this machine arrives from loopback too: only a direct one counts.
    if request.headers.get("X-Forwarded-For") or request.headers.get("Forwarded"):
        return False
    try:
        return ipaddress.ip_address(request.META.get("REMOTE_ADDR", "")).is_loopback
    except ValueError:
        return False


@require_GET
def metrics(request):
    if not _allowed(request):
        return HttpResponseForbidden(
            "Metrics are served to loopback callers and to callers with Authorization: Bearer <METRICS_TOKEN>.",
            content_type="text/plain",
        )
    return HttpResponse(generate_latest(_registry), content_type=CONTENT_TYPE_LATEST)


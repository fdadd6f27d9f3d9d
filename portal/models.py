"""The portal's own tables: what the program-manager pages need beyond the two apps' records."""

from __future__ import annotations

from django.contrib.postgres.fields import ArrayField
from django.db import models


class PortalAccess(models.Model):
    """No table: the holder of the portal pages' own permissions (a permission needs a model).

    The two roles (``portal.roles``) are groups holding these plus the apps' model permissions.
    """

    class Meta:
        managed = False
        default_permissions = ()
        permissions = [
            ("view_portal", "Can see the portal's pages (dashboard, members, offers, deliveries)"),
            ("export_redemptions", "Can export redemptions as CSV"),
        ]


class ActivitySums(models.Model):
    """What a day's or a month's rollup row holds: one program, one slice, its sums."""

    ALL_PROGRAMS = 0

    class Dimension(models.TextChoices):
        TOTAL = "total"
        OFFER = "offer"
        STORE = "store"

    program_id = models.BigIntegerField("program (Sparkfly id, 0 = all programs)")
    dimension = models.CharField(max_length=10, choices=Dimension.choices)
    key = models.BigIntegerField(help_text="offer or store Sparkfly id; 0 for totals")
    redemptions = models.PositiveIntegerField(default=0)
    issuances = models.PositiveIntegerField(default=0, help_text="issued credentials, once per offer")
    points_redeemed = models.BigIntegerField(default=0)

    class Meta:
        abstract = True


class DailyActivity(ActivitySums):
    """One day's redemptions, issuances and points redeemed, for one program and one slice:
    the pre-aggregated figures the dashboard reads (``portal.rollups`` writes them).

    ``program_id`` is a loyalty program's Sparkfly id, or ``ALL_PROGRAMS`` (0: every record
    once, enrolled or not). ``key`` is the offer's or store's Sparkfly id, 0 for the totals.
    """

    day = models.DateField(help_text="in the portal's time zone (TIME_ZONE)")

    class Meta:
        verbose_name_plural = "daily activity"
        constraints = [
            # Day first: a refresh replaces whole days (DELETE … WHERE day = ANY(…)).
            models.UniqueConstraint(fields=["day", "program_id", "dimension", "key"], name="daily_activity_unique"),
        ]
        # The dashboard's reads: one program, one slice, a range of days, summed per key from
        # the index alone (an index-only scan: a year of a thousand stores is ~400k entries).
        indexes = [
            models.Index(
                fields=["program_id", "dimension", "day"], include=["key", "redemptions", "issuances"],
                name="daily_activity_range",
            )
        ]

    def __str__(self) -> str:
        return f"{self.day} program {self.program_id} {self.dimension} {self.key}"


class MonthlyActivity(ActivitySums):
    """The sums of ``DailyActivity`` per calendar month: a year's range reads twelve months of
    rows instead of 365 days of them (``portal.rollups`` recomputes a month from its days in
    the transaction that changes them; the current month holds its days so far)."""

    month = models.DateField(help_text="its first day")

    class Meta:
        verbose_name_plural = "monthly activity"
        constraints = [
            models.UniqueConstraint(fields=["month", "program_id", "dimension", "key"], name="monthly_activity_unique"),
        ]
        # The same reads as DailyActivity's, summed from the index alone.
        indexes = [
            models.Index(
                fields=["program_id", "dimension", "month"], include=["key", "redemptions", "issuances"],
                name="monthly_activity_range",
            )
        ]

    def __str__(self) -> str:
        return f"{self.month:%Y-%m} program {self.program_id} {self.dimension} {self.key}"


class DailyDeliveries(models.Model):
    """Deliveries to Attentive created on one day, counted per status and, for delivered ones,
    per forwarding-delay bucket: the dashboard's delivery health over any range without reading
    a million deliveries (``portal.rollups``)."""

    # Bucket b holds delays (delivered_at - occurred_at) from DELAY_RATIO**b to DELAY_RATIO**(b+1)
    # milliseconds (under 1 ms: bucket 0): a percentile read back is within 5% of the true one.
    DELAY_RATIO = 1.1

    day = models.DateField(help_text="created on, in the portal's time zone (TIME_ZONE)")
    status = models.CharField(max_length=20)
    delay_bucket = models.SmallIntegerField(null=True, blank=True, help_text="delivered ones only")
    deliveries = models.PositiveIntegerField()

    class Meta:
        verbose_name_plural = "daily deliveries"
        indexes = [models.Index(fields=["day"], name="daily_deliveries_day")]

    def __str__(self) -> str:
        return f"{self.day} {self.status} bucket {self.delay_bucket}: {self.deliveries}"


class RollupRefresh(models.Model):
    """The single row saying up to when the daily rollups took changes in (``portal.rollups``)."""

    refreshed_at = models.DateTimeField(help_text="changes recorded before this time are in the figures")
    days = models.PositiveIntegerField(default=0, help_text="days recomputed by the last refresh")
    open_days = ArrayField(
        models.DateField(), default=list, blank=True,
        help_text="days with deliveries still pending or failed at the last refresh: recomputed by the next",
    )

    def __str__(self) -> str:
        return f"rollups as of {self.refreshed_at:%Y-%m-%d %H:%M:%S}"


class OperationalAlert(models.Model):
    """The single row of the delivery alert (``portal.alerts``): rewritten by the check every
    minute, read by every page's banner (one row, one query)."""

    problems = models.JSONField(
        default=list, blank=True, help_text='rules firing now: [{"rule": …, "message": …}], empty when all is well'
    )
    firing_since = models.DateTimeField(null=True, blank=True, help_text="start of the incident; empty when all clear")
    cleared_at = models.DateTimeField(null=True, blank=True, help_text="the last all-clear")
    checked_at = models.DateTimeField(null=True, blank=True, help_text="when the rules were last checked")

    def __str__(self) -> str:
        return "; ".join(problem["message"] for problem in self.problems) or "all clear"


class DailyCallbacks(models.Model):
    """Webhook requests received on one day (UTC), per kind, outcome and answer: /metrics's
    callback counters (``portal.callback_counts``), which outlive the requests' retention."""

    day = models.DateField()
    kind = models.CharField(max_length=20)
    outcome = models.CharField(max_length=20)
    status_code = models.PositiveSmallIntegerField()
    requests = models.PositiveIntegerField()

    class Meta:
        verbose_name_plural = "daily callbacks"
        constraints = [
            models.UniqueConstraint(fields=["day", "kind", "outcome", "status_code"], name="daily_callbacks_unique")
        ]

    def __str__(self) -> str:
        return f"{self.day} {self.kind} {self.outcome} {self.status_code}: {self.requests}"

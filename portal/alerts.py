"""The delivery alert: when deliveries start dying or the queue backs up, say so once.

A periodic job (``portal.tasks.check_alerts``, every minute) checks three rules and writes the
result to the single ``OperationalAlert`` row; every admin and portal page reads that one row
for its banner (``alert_banner``), so no page ever runs the rules' queries itself.

* ``failing``: the last ALERT_FAILED_ATTEMPTS tries to deliver to Attentive (across deliveries,
  in the order they were recorded) all failed. Clears with the first try that gets through.
* ``dead_letters``: a delivery was given up in the last ALERT_DEAD_LETTER_MINUTES (Attentive
  refused it for good, or it got too old to send: after failed tries, or never tried at all,
  say while sending was switched off — either way the event is lost to the journeys). Clears
  when that many minutes pass with none; so the first dead letter after an all-clear starts a
  new incident.
* ``backlog``: the oldest job due to run, or the oldest delivery not through yet, has waited
  longer than ALERT_BACKLOG_MINUTES. Clears when both are younger.

An incident is the time from the first rule firing to the all-clear. Each rule logs one ERROR
line when it starts firing: the first at the incident's start ("ALERT: …"), a rule joining
later when it joins ("ALERT, also: …") — the first dead letter during a failing streak is news
too. At most three ERROR lines an incident, never one a minute; the all-clear logs a WARNING.
The banner also warns when the rules have not been checked for CHECK_STALE_AFTER: with no
worker running, nothing else would.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from portal.models import OperationalAlert

logger = logging.getLogger(__name__)

RULES = ("failing", "dead_letters", "backlog")
CHECK_STALE_AFTER = timedelta(minutes=5)
_ERROR_SHOWN = 200  # characters of Attentive's last error in the banner


# --- the rules --------------------------------------------------------------------------------


def _failing() -> str:
    from attentive_sync.models import DeliveryAttempt

    needed = settings.ALERT_FAILED_ATTEMPTS
    # A try whose answer is unknown (its worker was killed) is no failure of Attentive's.
    latest = list(
        DeliveryAttempt.objects.exclude(outcome=DeliveryAttempt.Outcome.UNKNOWN)
        .order_by("-id").values_list("outcome", "status_code", "error")[:needed]
    )
    if len(latest) < needed or any(outcome == DeliveryAttempt.Outcome.DELIVERED for outcome, _, _ in latest):
        return ""
    _, status_code, error = latest[0]
    last = (error or f"HTTP {status_code}")[:_ERROR_SHOWN]
    return f"The last {needed} tries to deliver events to Attentive all failed (the latest: {last})."


def _dead_letters(now: datetime) -> str:
    from attentive_sync.models import Delivery

    minutes = settings.ALERT_DEAD_LETTER_MINUTES
    given_up = Delivery.objects.filter(dead_letter_at__gte=now - timedelta(minutes=minutes)).count()
    if not given_up:
        return ""
    return (
        f"{given_up} {'delivery was' if given_up == 1 else 'deliveries were'} given up in the last {minutes} "
        "minutes (refused for good by Attentive, or too old to send): fix the cause, then replay them."
    )


def _backlog() -> str:
    from attentive_sync.models import AttentiveSettings
    from portal.metrics import oldest_waiting

    limit = settings.ALERT_BACKLOG_MINUTES * 60
    with connection.cursor() as cursor:
        job_age, delivery_age = oldest_waiting(cursor)
    parts = []
    if job_age > limit:
        parts.append(f"the oldest job due has waited {job_age / 60:.0f} minutes (are the workers running and keeping up?)")
    if delivery_age > limit:
        blocker = AttentiveSettings.load().sending_blocker()
        parts.append(
            f"the oldest delivery not yet through was recorded {delivery_age / 60:.0f} minutes ago"
            + (f" ({blocker})" if blocker else "")
        )
    return ("Backlog: " + "; ".join(parts) + ".") if parts else ""


# --- the check ---------------------------------------------------------------------------------


def alerts_check(*, now: datetime | None = None) -> OperationalAlert:
    """Check the rules, record the result, and log the incident's start and end once each."""
    now = now or timezone.now()
    found = {"failing": _failing(), "dead_letters": _dead_letters(now), "backlog": _backlog()}
    problems = [{"rule": rule, "message": message} for rule, message in found.items() if message]
    with transaction.atomic():
        OperationalAlert.objects.get_or_create(pk=1)
        state = OperationalAlert.objects.select_for_update().get(pk=1)
        before = {problem["rule"] for problem in state.problems}
        joined = [problem for problem in problems if problem["rule"] not in before]
        if problems and not before:
            state.firing_since = now
            logger.error(
                "ALERT: deliveries need attention: %s", " ".join(problem["message"] for problem in problems),
                extra={"alert_rules": [problem["rule"] for problem in problems]},
            )
        elif joined:
            logger.error(
                "ALERT, also: %s", " ".join(problem["message"] for problem in joined),
                extra={"alert_rules": [problem["rule"] for problem in joined]},
            )
        elif before and not problems:
            logger.warning("alert cleared: deliveries are getting through again (the incident began %s)",
                           state.firing_since.isoformat() if state.firing_since else "earlier")
            state.firing_since, state.cleared_at = None, now
        state.problems, state.checked_at = problems, now
        state.save()
    return state


# --- what pages read -------------------------------------------------------------------------------


def alert_state() -> OperationalAlert | None:
    return OperationalAlert.objects.filter(pk=1).first()


@dataclass(frozen=True)
class Banner:
    messages: list[str]
    since: datetime | None


def current_banner(*, now: datetime | None = None) -> Banner | None:
    """What the banner says now, or None when there is nothing to say."""
    state = alert_state()
    if state is None:
        return None
    messages = [problem["message"] for problem in state.problems]
    now = now or timezone.now()
    if state.checked_at and now - state.checked_at > CHECK_STALE_AFTER:
        messages.append(
            f"The delivery checks last ran {(now - state.checked_at).total_seconds() / 60:.0f} minutes ago: "
            "is a worker running (`manage.py run_worker`)?"
        )
    return Banner(messages, state.firing_since) if messages else None


def alert_banner(request) -> dict:
    """Template context processor: ``operational_alert``, read (one row) only by a template
    that shows it, for a signed-in user."""

    def banner() -> Banner | None:
        user = getattr(request, "user", None)
        return current_banner() if user is not None and user.is_authenticated else None

    return {"operational_alert": banner}

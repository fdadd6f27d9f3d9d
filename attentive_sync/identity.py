"""Identity: tie a person's clientUserId to their phone and email at Attentive, once per set.

Custom events may name a person by ``clientUserId`` alone; Attentive finds the subscriber only
once that id is associated with their phone or email: by a subscribe that carried it, or by
``POST /v1/identity-resolution/user-identifiers`` (ref §4 of reference/attentive-api.md: a
clientUserId must come with at least one other identifier; 202; 10 requests/s).

* ``request_links(contacts)`` notes which contact sets are to be linked, in the database only
  (cheap enough for everyone a sync changed). A set equal to the one last linked is not
  pending; a changed one is.
* ``link_pending()`` (the ``link_identities`` job, one at a time) sends the pending sets at
  Attentive's identity rate, for about a minute per run.
* ``link_identity(contact)`` links one set now, unless it is the one last linked.

The set last linked is kept as a keyed digest (HMAC with SECRET_KEY) of the clientUserId, phone
and email. After a SECRET_KEY change every set looks new and is linked again when next
requested, which is harmless: the call only associates identifiers. Attentive has no call to
undo an association, so a replaced phone or email stays associated there too.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings as django_settings
from django.db import transaction
from django.utils import timezone
from procrastinate import exceptions as procrastinate_exceptions

from attentive_sync.client import IDENTITY_PATH, AttentiveClient
from attentive_sync.errors import AttentiveError, AttentiveRedirect, AttentiveRequestError
from attentive_sync.jobs import in_transaction
from attentive_sync.models import AttentiveSettings, IdentityLink
from attentive_sync.subscriptions import Contact, ContactRefused, NotConfigured, client_from_settings, rate_limited_call

logger = logging.getLogger(__name__)

REQUEST_BATCH = 1000
PENDING_BATCH = 50
# A run stops taking new links after this long; the next run (queued at once) goes on.
RUN_SECONDS = 50.0
JOB_LOCK = "attentive-identity-links"
# Links requested by hooks are not urgent: their run starts this much later, so a burst of
# contact changes or a sync's changes are linked in one run, after the work that caused them.
HOOK_DELAY = timedelta(seconds=10)


def contacts_digest(contact: Contact) -> str:
    message = "\x1f".join((contact.client_user_id, contact.phone, contact.email)).encode()
    return hmac.new(django_settings.SECRET_KEY.encode(), message, hashlib.sha256).hexdigest()


def request_links(contacts: Iterable[Contact]) -> int:
    """Mark each contact set to be linked unless it is the set last linked (the last of
    several sets for one clientUserId wins); return how many are newly pending."""
    newly_pending = 0
    batch: list[Contact] = []
    for contact in contacts:
        batch.append(contact)
        if len(batch) == REQUEST_BATCH:
            newly_pending += _request_batch(batch)
            batch = []
    if batch:
        newly_pending += _request_batch(batch)
    return newly_pending


def _request_batch(contacts: list[Contact]) -> int:
    by_id = {contact.client_user_id: contact for contact in contacts}
    existing = {link.client_user_id: link for link in IdentityLink.objects.filter(client_user_id__in=by_id)}
    now, writes, newly_pending = timezone.now(), [], 0
    for client_user_id, contact in by_id.items():
        link = existing.get(client_user_id)
        pending = link is None or link.contacts_digest != contacts_digest(contact)
        if link is not None and link.pending == pending and (link.phone, link.email) == (contact.phone, contact.email):
            continue
        newly_pending += pending and not (link is not None and link.pending)
        writes.append(IdentityLink(
            client_user_id=client_user_id, phone=contact.phone, email=contact.email, pending=pending, requested_at=now
        ))
    # One race-safe statement: a concurrent request for the same person updates instead of failing.
    IdentityLink.objects.bulk_create(
        writes, update_conflicts=True, unique_fields=["client_user_id"],
        update_fields=["phone", "email", "pending", "requested_at"],
    )
    return newly_pending


def link_identity(contact: Contact, *, client: AttentiveClient) -> bool:
    """Send the contact set to Attentive unless it is the one last linked; True when sent.
    An Attentive error is recorded, then raised."""
    digest = contacts_digest(contact)
    link = IdentityLink.objects.filter(client_user_id=contact.client_user_id).first()
    if link is not None and link.contacts_digest == digest:
        if link.pending or (link.phone, link.email) != (contact.phone, contact.email):
            IdentityLink.objects.filter(pk=link.pk).update(phone=contact.phone, email=contact.email, pending=False)
        return False
    attempted_at = timezone.now()
    try:
        rate_limited_call(client, IDENTITY_PATH, lambda: client.identify(
            clientUserId=contact.client_user_id, phone=contact.phone, email=contact.email
        ))
    except AttentiveError as exc:
        IdentityLink.objects.update_or_create(
            client_user_id=contact.client_user_id,
            defaults={"phone": contact.phone, "email": contact.email, "pending": retryable(exc),
                      "attempted_at": attempted_at, "last_error": str(exc)},
        )
        raise
    with transaction.atomic():
        link, created = IdentityLink.objects.select_for_update().get_or_create(
            client_user_id=contact.client_user_id, defaults={"phone": contact.phone, "email": contact.email}
        )
        # Contacts requested while this set was on its way stay pending: they are newer.
        if created or not link.pending or (link.phone, link.email) == (contact.phone, contact.email):
            link.phone, link.email, link.pending = contact.phone, contact.email, False
        link.contacts_digest, link.linked_at, link.attempted_at, link.last_error = digest, timezone.now(), attempted_at, ""
        link.save()
    return True


def retryable(exc: AttentiveError) -> bool:
    """Worth another try later: Attentive down or slow, over its rate, or refusing the key (an
    operator fixes that). A request Attentive refuses for its content is not."""
    return not isinstance(exc, AttentiveRequestError | AttentiveRedirect)


@dataclass
class LinkRun:
    linked: int = 0
    unchanged: int = 0
    failed: int = 0
    more: bool = False
    stopped: str = ""


def link_pending(*, client: AttentiveClient | None = None, seconds: float = RUN_SECONDS) -> LinkRun:
    """Link pending contact sets, oldest request first, for about ``seconds``. Stops at the
    first failure worth retrying (Attentive down, the key refused): they stay pending."""
    run = LinkRun()
    try:
        client = client or client_from_settings(AttentiveSettings.load(), automatic=True)
    except NotConfigured as exc:
        run.stopped = str(exc)
        return run
    deadline, tried = time.monotonic() + seconds, set()
    while True:
        links = list(IdentityLink.objects.filter(pending=True).exclude(pk__in=tried).order_by("requested_at", "pk")[:PENDING_BATCH])
        if not links:
            return run
        for link in links:
            if time.monotonic() >= deadline:
                run.more = True
                return run
            tried.add(link.pk)
            try:
                contact = Contact(link.client_user_id, phone=link.phone, email=link.email)
            except ContactRefused as exc:
                IdentityLink.objects.filter(pk=link.pk).update(pending=False, last_error=str(exc))
                run.failed += 1
                continue
            try:
                sent = link_identity(contact, client=client)
            except AttentiveError as exc:
                run.failed += 1
                if retryable(exc):
                    run.stopped = str(exc)
                    return run
                continue
            run.linked += sent
            run.unchanged += not sent


def queue_link_job(*, delay: timedelta = timedelta(0)) -> bool:
    """Queue a run of ``link_pending`` in ``delay``; False when one already waits (it will see
    these too)."""
    from attentive_sync.tasks import link_identities

    try:
        with transaction.atomic():  # a savepoint: the refused duplicate must not poison the caller
            in_transaction(link_identities.configure(
                queueing_lock=JOB_LOCK, schedule_in={"seconds": delay.total_seconds()}
            )).defer()
    except procrastinate_exceptions.AlreadyEnqueued:
        return False
    return True


def link_of(client_user_id: str) -> IdentityLink | None:
    """The person's identity link, if one was ever requested (a selector)."""
    return IdentityLink.objects.filter(client_user_id=client_user_id).first()

"""Mirror services: stream each Sparkfly resource page by page into PostgreSQL.

Sparkfly has no ``updated_since`` filter, so every sync is a full paginated scan. Each page is
upserted in bulk and committed together with the run's checkpoint, which gives three
properties:

* flat memory: one page is held at a time, however large the account;
* idempotent: unchanged rows are not rewritten (see ``upsert.py``);
* resumable: a run that crashed or failed is continued by the next run of the same resource
  from the page after its checkpoint, not from page 1.

A PostgreSQL advisory lock per resource keeps two syncs of one resource from running at once
(and tells a crashed run, whose lock died with its connection, from a live one).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta

from django.conf import settings
from django.db import DatabaseError, connection, transaction
from django.utils import timezone

from attentive_sync.retention import Pruned, delete_in_batches
from sparkfly_sync import attentive_members, loyalty_attributes
from sparkfly_sync import client as api
from sparkfly_sync import payloads
from sparkfly_sync.client import Page, SparkflyClient
from sparkfly_sync.errors import (
    SparkflyAuthError,
    SparkflyConnectionError,
    SparkflyError,
    SparkflyNotFound,
    SparkflyRateLimited,
    SparkflyServerError,
)
from sparkfly_sync.models import (
    Channel,
    Credential,
    LoyaltyEnrollment,
    LoyaltyProgram,
    Member,
    Merchant,
    Offer,
    OfferChannel,
    Store,
    SyncRun,
)
from sparkfly_sync.upsert import UpsertResult, upsert_rows

logger = logging.getLogger(__name__)

# A run that failed or crashed longer ago than this starts over instead of resuming.
RESUME_WINDOW = timedelta(hours=24)
# How many reasons for skipped items a run keeps (the count is always complete).
MAX_ERROR_SAMPLES = 20


class SyncAlreadyRunning(Exception):
    """Another process is syncing this resource right now."""


@dataclass(frozen=True)
class Stream:
    """One paginated list read by a sync; ``key`` identifies it in checkpoints. A stream
    under a parent (a merchant's stores) may 404 when Sparkfly deleted the parent."""

    key: str
    path: str
    under_parent: bool = False


@dataclass
class PageOutcome:
    upserted: UpsertResult = field(default_factory=UpsertResult)
    errors: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Resource:
    """How one Sparkfly resource is listed and mirrored."""

    name: str
    model: type
    collection: str
    item: str
    to_row: Callable[[dict], dict]
    streams: Callable[[], list[Stream]]
    detail_path: Callable[[object], str]
    max_per_page: int | None = None

    def prepare(self, client: SparkflyClient, items: list[dict], where: str) -> tuple[list[dict], list[str]]:
        """Any HTTP a batch needs before it is written, done outside the page's transaction
        (a transaction must not stay open across network calls). Returns the items to write
        and the reasons for any left out."""
        return items, []

    def write_items(self, items: list[dict], where: str) -> PageOutcome:
        """Mirror a batch of items (a page, or single fetches); ``where`` names it in errors."""
        outcome = PageOutcome()
        rows = []
        for position, item in enumerate(items):
            try:
                rows.append(self.to_row(item))
            except payloads.PayloadError as exc:
                outcome.errors.append(f"{self.item} {position + 1} of {where}: {exc}")
        outcome.upserted = upsert_rows(self.model, rows)
        return outcome

    def fetch(self, client: SparkflyClient, row) -> dict:
        """The current payload of one mirrored row, from Sparkfly."""
        body = client.get(self.detail_path(row))
        item = body.get(self.item)
        if not isinstance(item, dict):
            raise payloads.PayloadError(f"Sparkfly's answer for {self.item} {row.sparkfly_id} has no {self.item!r} object")
        return item


@dataclass(frozen=True)
class OfferResource(Resource):
    """Offers list in a short form; the full offer carries its channel links and their xids."""

    def prepare(self, client: SparkflyClient, items: list[dict], where: str) -> tuple[list[dict], list[str]]:
        full, errors = [], []
        for position, item in enumerate(items):
            try:
                offer_id = payloads.sparkfly_id(item)
            except payloads.PayloadError as exc:
                errors.append(f"offer {position + 1} of {where}: {exc}")
                continue
            try:
                full.append(self.fetch(client, Offer(sparkfly_id=offer_id)))
            except SparkflyNotFound:
                errors.append(f"offer {offer_id} was listed but is gone at Sparkfly; skipped")
            except payloads.PayloadError as exc:
                errors.append(str(exc))
        return full, errors

    def write_items(self, items: list[dict], where: str) -> PageOutcome:
        outcome = PageOutcome()
        offers, links, reconciled = [], [], []
        for position, item in enumerate(items):
            try:
                row = self.to_row(item)
                offer_links = payloads.offer_channel_rows(item)
            except payloads.PayloadError as exc:
                outcome.errors.append(f"offer {position + 1} of {where}: {exc}")
                continue
            offers.append(row)
            if offer_links is not None:
                links.extend(offer_links)
                reconciled.append(row["sparkfly_id"])
        outcome.upserted = upsert_rows(Offer, offers)
        upsert_rows(OfferChannel, links, conflict_fields=("offer_id", "channel_id"))
        # Links Sparkfly no longer lists for these offers are gone (only where it said which).
        linked = {(link["offer_id"], link["channel_id"]) for link in links}
        stale = [
            pk
            for pk, offer_id, channel_id in OfferChannel.objects.filter(offer_id__in=reconciled).values_list(
                "pk", "offer_id", "channel_id"
            )
            if (offer_id, channel_id) not in linked
        ]
        OfferChannel.objects.filter(pk__in=stale).delete()
        return outcome


def _single(path: str) -> Callable[[], list[Stream]]:
    return lambda: [Stream("all", path)]


def _below(collection_path: str) -> Callable[[object], str]:
    return lambda row: f"{collection_path}/{row.sparkfly_id}"


def _store_path(store) -> str:
    if store.merchant_id is None:
        # Sparkfly only serves a store under its merchant.
        raise payloads.PayloadError(f"store {store.sparkfly_id} has no merchant, so Sparkfly cannot be asked for it")
    return f"{api.STORES_PATH.format(merchant_id=store.merchant_id)}/{store.sparkfly_id}"


def _per_parent(model: type, template: str, placeholder: str) -> Callable[[], list[Stream]]:
    """One stream per mirrored parent (stores per merchant, enrollments per program)."""

    def streams() -> list[Stream]:
        ids = model.objects.order_by("sparkfly_id").values_list("sparkfly_id", flat=True)
        return [
            Stream(str(parent_id), template.format(**{placeholder: parent_id}), under_parent=True) for parent_id in ids
        ]

    return streams


# In dependency order: stores need their merchants mirrored, enrollments their programs.
RESOURCES: dict[str, Resource] = {
    resource.name: resource
    for resource in (
        Resource(
            "merchants",
            Merchant,
            "merchants",
            "merchant",
            payloads.merchant_row,
            _single(api.MERCHANTS_PATH),
            _below(api.MERCHANTS_PATH),
        ),
        Resource(
            "stores",
            Store,
            "stores",
            "store",
            payloads.store_row,
            _per_parent(Merchant, api.STORES_PATH, "merchant_id"),
            _store_path,
        ),
        Resource(
            "channels",
            Channel,
            "channels",
            "channel",
            payloads.channel_row,
            _single(api.CHANNELS_PATH),
            _below(api.CHANNELS_PATH),
        ),
        OfferResource(
            "offers", Offer, "offers", "offer", payloads.offer_row, _single(api.OFFERS_PATH), _below(api.OFFERS_PATH)
        ),
        Resource(
            "members",
            Member,
            "members",
            "member",
            payloads.member_row,
            _single(api.MEMBERS_PATH),
            _below(api.MEMBERS_PATH),
            max_per_page=api.MEMBERS_MAX_PER_PAGE,
        ),
        Resource(
            "credentials",
            Credential,
            "credentials",
            "credential",
            payloads.credential_row,
            _single(api.CREDENTIALS_PATH),
            _below(api.CREDENTIALS_PATH),
        ),
        Resource(
            "loyalty_programs",
            LoyaltyProgram,
            "loyalty_programs",
            "loyalty_program",
            payloads.loyalty_program_row,
            _single(api.LOYALTY_PROGRAMS_PATH),
            _below(api.LOYALTY_PROGRAMS_PATH),
        ),
        Resource(
            "loyalty_enrollments",
            LoyaltyEnrollment,
            "loyalty_enrollments",
            "loyalty_enrollment",
            payloads.loyalty_enrollment_row,
            _per_parent(LoyaltyProgram, api.LOYALTY_ENROLLMENTS_PATH, "program_id"),
            lambda enrollment: api.LOYALTY_ENROLLMENT_PATH.format(enrollment_id=enrollment.sparkfly_id),
        ),
    )
}


@contextmanager
def _resource_lock(name: str) -> Iterator[None]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(hashtext(%s))", [f"sparkfly_sync:{name}"])
        (acquired,) = cursor.fetchone()
    if not acquired:
        raise SyncAlreadyRunning(f"a {name} sync is already running")
    try:
        yield
    finally:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_unlock(hashtext(%s))", [f"sparkfly_sync:{name}"])


def _run_to_continue(name: str) -> SyncRun | None:
    """The latest run of ``name`` if it stopped early (crash or failure) recently enough.

    Called under the resource's lock, so a run still marked running has lost its process.
    """
    latest = SyncRun.objects.filter(resource=name).order_by("-started_at", "-pk").first()
    if latest is None or latest.status == SyncRun.Status.SUCCEEDED:
        return None
    if latest.checkpoint and latest.started_at >= timezone.now() - RESUME_WINDOW:
        return latest
    if latest.status == SyncRun.Status.RUNNING:
        _finish(latest, SyncRun.Status.FAILED, failure="abandoned: its process stopped, and it is too old to resume")
    return None


def _pending_streams(streams: list[Stream], checkpoint: dict | None) -> Iterator[tuple[Stream, int]]:
    """Each stream still to read, with the page to start from."""
    keys = [stream.key for stream in streams]
    start_index, start_page = 0, 1
    if checkpoint and checkpoint.get("stream") in keys:
        start_index = keys.index(checkpoint["stream"])
        if checkpoint.get("finished"):
            start_index += 1
        else:
            start_page = int(checkpoint.get("page", 0)) + 1
    for index in range(start_index, len(streams)):
        yield streams[index], (start_page if index == start_index else 1)


def _per_page(resource: Resource, requested: int | None) -> int:
    per_page = requested or settings.SPARKFLY_PAGE_SIZE
    if resource.max_per_page:
        per_page = min(per_page, resource.max_per_page)
    return max(1, per_page)


def sync_resource(
    name: str,
    *,
    client: SparkflyClient,
    per_page: int | None = None,
    on_page: Callable[[SyncRun, Page], None] | None = None,
) -> SyncRun:
    """Mirror one resource; return its ``SyncRun`` (succeeded or failed, with the reason)."""
    resource = RESOURCES[name]
    with _resource_lock(name):
        run = _run_to_continue(name)
        if run is None:
            run = SyncRun.objects.create(resource=name)
        else:
            logger.info("resuming %s sync %s after page %s", name, run.pk, run.checkpoint)
            run.resumed += 1
            run.status, run.failure, run.finished_at = SyncRun.Status.RUNNING, "", None
            run.save(update_fields=["resumed", "status", "failure", "finished_at", "updated_at"])
        # A resumed run keeps the page size its checkpoint counted pages in: the same page
        # number at another size is another offset, and rows would be skipped.
        page_size = (run.checkpoint or {}).get("per_page") or _per_page(resource, per_page)
        started = time.monotonic()
        try:
            for stream, start_page in _pending_streams(resource.streams(), run.checkpoint):
                _sync_stream(run, resource, stream, start_page, page_size, client, on_page)
        except (SparkflyError, payloads.PayloadError, DatabaseError) as exc:
            _finish(run, SyncRun.Status.FAILED, failure=f"{exc.__class__.__name__}: {exc}")
            logger.warning("%s sync %s failed after %d pages: %s", name, run.pk, run.pages, exc)
            return run
        except BaseException as exc:
            # A bug or an interrupt: keep the reason on the run, then let it propagate.
            _finish(run, SyncRun.Status.FAILED, failure=f"{exc.__class__.__name__}: {exc}")
            raise
        _finish(run, SyncRun.Status.SUCCEEDED)
        if resource.model is Member:  # queues the identity links of changed contacts; never fails the run
            attentive_members.link_changed_members(changed_since=run.started_at)
        if resource.model is LoyaltyEnrollment:  # queues the changed members' loyalty attributes; never fails the run
            loyalty_attributes.enrollments_synced(changed_since=run.started_at)
        logger.info(
            "%s sync %s: %d pages, %d created, %d updated, %d unchanged, %d errors in %.1fs",
            name, run.pk, run.pages, run.created, run.updated, run.unchanged, run.errors, time.monotonic() - started,
        )
        return run


def _sync_stream(run, resource, stream, start_page, page_size, client, on_page) -> None:
    pages = client.iter_pages(
        stream.path, collection=resource.collection, item=resource.item, per_page=page_size, start_page=start_page
    )
    try:
        for page in pages:
            where = f"page {page.number}"
            items, skipped = resource.prepare(client, page.items, where)
            with transaction.atomic():
                outcome = resource.write_items(items, where)
                outcome.errors[:0] = skipped
                _record_page(run, {"stream": stream.key, "page": page.number, "per_page": page_size}, outcome, pages=1)
            if on_page is not None:
                on_page(run, page)
    except SparkflyNotFound:
        if not stream.under_parent:
            raise
        # Sparkfly deleted the parent (a merchant, a program): its list is gone, not broken.
        outcome = PageOutcome(errors=[f"{stream.path} is gone at Sparkfly (404); skipped"])
        with transaction.atomic():
            _record_page(run, {"stream": stream.key, "finished": True, "per_page": page_size}, outcome, pages=0)


def _record_page(run: SyncRun, checkpoint: dict, outcome: PageOutcome, *, pages: int) -> None:
    """Count a committed page and move the checkpoint past it, in the page's transaction."""
    run.pages += pages
    run.created += outcome.upserted.created
    run.updated += outcome.upserted.updated
    run.unchanged += outcome.upserted.unchanged
    run.errors += len(outcome.errors)
    room = MAX_ERROR_SAMPLES - len(run.error_samples)
    if room > 0 and outcome.errors:
        run.error_samples = run.error_samples + outcome.errors[:room]
    run.checkpoint = checkpoint
    run.save(
        update_fields=["pages", "created", "updated", "unchanged", "errors", "error_samples", "checkpoint", "updated_at"]
    )


def _finish(run: SyncRun, status: str, *, failure: str = "") -> None:
    if status == SyncRun.Status.SUCCEEDED:
        run.checkpoint = None
        counted = ["checkpoint"]
    else:
        # The in-memory counters and checkpoint may belong to a page that was rolled back;
        # what is committed is the truth.
        run.refresh_from_db(
            fields=["pages", "created", "updated", "unchanged", "errors", "error_samples", "checkpoint"]
        )
        counted = []
    run.status = status
    run.failure = failure[:10000]
    run.finished_at = timezone.now()
    run.save(update_fields=["status", "failure", "finished_at", "updated_at", *counted])


def resource_for_model(model: type) -> Resource:
    for resource in RESOURCES.values():
        if resource.model is model:
            return resource
    raise LookupError(f"{model.__name__} is not a mirrored Sparkfly resource")


@dataclass
class ResyncOutcome:
    refreshed: int = 0
    gone: list[int] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


# Sparkfly is unreachable, overloaded or refusing our key: every call would fail alike, so
# callers stop (and retry later) rather than record each row as bad.
TRANSIENT_ERRORS = (SparkflyConnectionError, SparkflyAuthError, SparkflyServerError, SparkflyRateLimited)


def refresh_row(row, *, client: SparkflyClient) -> list[str]:
    """Fetch one row (a saved one, or an unsaved instance holding just the ``sparkfly_id``
    and any parent id its path needs) from Sparkfly and upsert it. Returns the reasons the
    payload could not be mirrored (empty on success); raises SparkflyNotFound when Sparkfly
    no longer has it, and the TRANSIENT_ERRORS as they come."""
    resource = resource_for_model(type(row))
    item = resource.fetch(client, row)
    with transaction.atomic():
        return resource.write_items([item], f"{resource.item} {row.sparkfly_id}").errors


def resync_rows(rows, *, client: SparkflyClient) -> ResyncOutcome:
    """Fetch each mirrored row again from Sparkfly and upsert it (the admin's "resync").

    A row Sparkfly no longer has is reported in ``gone`` and left in the mirror: deleting
    local history because of one 404 is not a call a resync should make silently. An outage,
    a rate limit or a rejected key would fail every row alike, so it stops the resync and is
    raised.
    """
    outcome = ResyncOutcome()
    for row in rows:
        try:
            errors = refresh_row(row, client=client)
        except SparkflyNotFound:
            outcome.gone.append(row.sparkfly_id)
            continue
        except TRANSIENT_ERRORS:
            raise
        except (SparkflyError, payloads.PayloadError) as exc:
            outcome.failures.append(f"{resource_for_model(type(row)).item} {row.sparkfly_id}: {exc}")
            continue
        if errors:
            outcome.failures.extend(errors)
        else:
            outcome.refreshed += 1
    return outcome


def sync_all(*, client: SparkflyClient, resources: list[str] | None = None, **options) -> list[SyncRun]:
    """Sync the named resources (default: all) in dependency order.

    One failure stops none: a failed resource is recorded on its run, and a resource another
    process is already syncing is skipped (that process is doing the work).
    """
    runs = []
    for name in [name for name in RESOURCES if resources is None or name in resources]:
        try:
            runs.append(sync_resource(name, client=client, **options))
        except SyncAlreadyRunning as exc:
            logger.info("skipped: %s", exc)
    return runs


def sync_runs_prune(*, keep: int | None = None) -> Pruned:
    """Delete each resource's finished runs beyond its newest ``keep`` (RETENTION_SYNC_RUNS):
    one a resource an hour would otherwise pile up for good. A running run (a crash resumes it
    from its checkpoint) is never deleted, and the newest ones the scheduler reads stay."""
    from django.db.models import F, Window
    from django.db.models.functions import RowNumber

    keep = settings.RETENTION_SYNC_RUNS if keep is None else keep
    ranked = SyncRun.objects.annotate(
        newness=Window(RowNumber(), partition_by=[F("resource")], order_by=[F("started_at").desc(), F("pk").desc()])
    )
    beyond = ranked.filter(newness__gt=keep).values("pk")
    old = SyncRun.objects.filter(pk__in=beyond).exclude(status=SyncRun.Status.RUNNING)
    return delete_in_batches(old, what="mirror sync runs")

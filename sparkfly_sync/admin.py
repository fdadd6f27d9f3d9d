"""Admin of the Sparkfly side: read-only pages over the mirror (what Sparkfly owns) and over
what Sparkfly sends us, with actions that call the services.

* Sparkfly owns every mirrored field (the next sync would overwrite an edit), and only the
  sync services write the mirror, so no row is added, changed or deleted here.
* "Resync selected from Sparkfly" fetches the chosen rows again now (``sync.resync_rows``);
  "Sync all from Sparkfly" queues the background sync of the whole resource
  (``tasks.queue_mirror_sync``). Both ask for confirmation first, as dj-stripe's actions do:
  one calls Sparkfly once per row while the admin waits, the other starts a full scan.
* Where Sparkfly calls us (``callbacks``): a channel's page shows its conversion callback URL,
  the secret masked, and whether Sparkfly has it; actions set it at Sparkfly, or rotate its
  secret and set the new one. Secrets and signing keys are never shown back: a URL secret
  only masked, a signing key only as its last four characters, and a pasted key is write-only.
* What Sparkfly sent (``InboundRequest``, ``Redemption``, ``Notification``) is an audit log:
  read-only, rejections counted by status above the list, "Retry forwarding" on failures.
* Pages stay cheap on tables of millions of rows: no second COUNT(*), relations joined into
  the page's one query, searches that use indexes, and no filter or date hierarchy that
  lists a big column's distinct values (each would scan the whole table on every page view).
"""

from __future__ import annotations

import json
import uuid
from datetime import timedelta
from http import HTTPStatus
from urllib.parse import urlsplit

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.admin.utils import model_ngettext
from django.contrib.auth import get_permission_codename
from django.core.exceptions import ImproperlyConfigured, ObjectDoesNotExist
from django.db.models import Count, Q
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import formats, timezone
from django.utils.html import format_html, format_html_join
from django.utils.text import Truncator

from sparkfly_sync import callbacks, forwarding
from sparkfly_sync.admin_attentive import AttentiveMemberAdminMixin
from sparkfly_sync.admin_issuance import IssuanceAdminMixin
from sparkfly_sync.admin_segments import SegmentAdminMixin
from sparkfly_sync.client import client_from_settings
from sparkfly_sync.errors import SparkflyError
from sparkfly_sync.inbound import rotate_secret
from sparkfly_sync.models import (
    is_unreadable,
    Channel,
    ConversionEndpoint,
    Credential,
    InboundRequest,
    LoyaltyEnrollment,
    LoyaltyProgram,
    Member,
    Merchant,
    Notification,
    NotificationEndpoint,
    Offer,
    OfferChannel,
    Redemption,
    Store,
    SyncRun,
)
from sparkfly_sync.payloads import normalize_email, normalize_phone
from sparkfly_sync.serializers import HANDLED_EVENTS, MAX_SPARKFLY_ID
from sparkfly_sync.sync import resource_for_model, resync_rows
from sparkfly_sync.tasks import queue_mirror_sync

# This app owns the portal's admin pages; attentive_sync's admin registers into the same site.
admin.site.site_header = admin.site.site_title = "Sparkfly ↔ Attentive portal"

# Resync runs inside the request, one Sparkfly call per row (two per offer): a page of rows
# finishes well within a proxy's timeout. Larger sets are what "Sync all" (a worker) is for.
MAX_RESYNC_ROWS = 100
# How many related rows (a member's credentials, an offer's channels) a change page lists.
RELATED_ROWS_SHOWN = 50
# Columns every mirror row has (SparkflyMirror), shown after the model's own.
MIRROR_BOOKKEEPING = ("sparkfly_id", "sparkfly_created_at", "sparkfly_updated_at", "synced_at")
# How many gone ids and failures one message lists before summarising the rest.
MESSAGE_ITEMS = 10

# Payload keys whose values are credentials. A channel's conversion callback URL embeds our
# webhook endpoint's secret, an eligible channel carries its security_key, a credential its
# wallet token: an admin page must never show them (ARCHITECTURE: secrets never shown).
SECRET_KEYS = frozenset({"conversion_callback_url", "token", "secret", "password", "key"})
SECRET_KEY_SUFFIXES = ("_secret", "_token", "_password", "_key")
HIDDEN = "(hidden)"


def _is_secret(key: object) -> bool:
    name = str(key).lower()
    return name in SECRET_KEYS or name.endswith(SECRET_KEY_SUFFIXES)


def _without_secrets(value):
    if isinstance(value, dict):
        return {
            key: HIDDEN if _is_secret(key) and item not in (None, "") else _without_secrets(item)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [_without_secrets(item) for item in value]
    return value


def _json_block(value) -> str:
    # format_html escapes the dump: a payload is untrusted text (it may hold "<script>").
    dumped = json.dumps(_without_secrets(value), indent=2, sort_keys=True, ensure_ascii=False)
    return format_html('<pre style="white-space: pre-wrap">{}</pre>', dumped)


def _when(moment) -> str:
    return formats.localize(timezone.localtime(moment)) if moment else ""


def _change_url(obj) -> str:
    opts = obj._meta
    return reverse(f"admin:{opts.app_label}_{opts.model_name}_change", args=[obj.pk])


def _change_link(obj, text=None) -> str:
    return format_html('<a href="{}">{}</a>', _change_url(obj), obj if text is None else text)


def _related_link(obj, name: str) -> str:
    """A Sparkfly relation as a link to the related row's page, or its bare Sparkfly id while
    that row is not mirrored. Reads the relation from the select_related cache, so a page of
    rows costs no extra query."""
    sparkfly_id = getattr(obj, obj._meta.get_field(name).attname)
    if sparkfly_id is None:
        return ""
    try:
        related = getattr(obj, name)
    except ObjectDoesNotExist:
        related = None
    return _change_link(related) if related is not None else str(sparkfly_id)


def _table(headers: tuple[str, ...], rows, *, footer: str = "") -> str:
    head = format_html_join("", "<th>{}</th>", ((header,) for header in headers))
    body = format_html_join(
        "",
        "<tr>{}</tr>",
        ((format_html_join("", "<td>{}</td>", (("" if cell is None else cell,) for cell in row)),) for row in rows),
    )
    if not body:
        return format_html("<p>None mirrored.</p>{}", footer)
    return format_html("<table><thead><tr>{}</tr></thead><tbody>{}</tbody></table>{}", head, body, footer)


def _endpoint_of(channel: Channel) -> ConversionEndpoint | None:
    # From the prefetch cache (ChannelAdmin.get_queryset): no query per channel.
    return next(iter(channel.conversion_endpoints.all()), None)


NO_ENDPOINT_YET = (
    "No endpoint yet: the actions “Set the conversion callback at Sparkfly” and "
    "`manage.py sparkfly_callbacks` create it."
)


def _listed(items: list, limit: int = MESSAGE_ITEMS) -> str:
    shown = ", ".join(str(item) for item in items[:limit])
    return f"{shown} and {len(items) - limit} more" if len(items) > limit else shown


class KnownValuesFilter(admin.SimpleListFilter):
    """Filter on a fixed list of values, plus "other" for values Sparkfly adds later.

    Django's default filter for a free-text column lists its DISTINCT values, a full scan of
    a table of millions of rows on every page view.
    """

    values: tuple[str, ...] = ()
    OTHER = "__other__"

    def lookups(self, request, model_admin):
        return [*((value, value) for value in self.values), (self.OTHER, "other or empty")]

    def queryset(self, request, queryset):
        if self.value() == self.OTHER:
            return queryset.exclude(**{f"{self.parameter_name}__in": self.values})
        if self.value():
            return queryset.filter(**{self.parameter_name: self.value()})
        return queryset


def known_values_filter(field_name: str, values) -> type[KnownValuesFilter]:
    return type(
        f"{field_name.title()}Filter",
        (KnownValuesFilter,),
        {"title": field_name.replace("_", " "), "parameter_name": field_name, "values": tuple(values)},
    )


class PresenceFilter(admin.SimpleListFilter):
    """"Has a phone / has an email": the mirror stores a missing contact as ""."""

    def lookups(self, request, model_admin):
        return [("yes", "yes"), ("no", "no")]

    def queryset(self, request, queryset):
        empty = {self.field_name: ""}
        if self.value() == "yes":
            return queryset.exclude(**empty)
        if self.value() == "no":
            return queryset.filter(**empty)
        return queryset


def presence_filter(field_name: str) -> type[PresenceFilter]:
    return type(
        f"Has{field_name.title()}Filter",
        (PresenceFilter,),
        {"title": f"has {field_name}", "parameter_name": f"has_{field_name}", "field_name": field_name},
    )


class PortalActionsMixin:
    """What this app's actions share: the confirmation page of those that ask first, and
    actions that act on something other than the ticked rows, so they run with none ticked."""

    # Actions Django would refuse with nothing ticked: they run on the whole (filtered) list.
    actions_without_selection: tuple[str, ...] = ()

    def changelist_view(self, request, extra_context=None):
        if (
            request.method == "POST"
            and request.POST.get("action") in self.actions_without_selection
            and not request.POST.getlist(helpers.ACTION_CHECKBOX_NAME)
        ):
            post = request.POST.copy()
            post.setlist(helpers.ACTION_CHECKBOX_NAME, ["all"])
            post["select_across"] = "1"
            request.POST = post
        return super().changelist_view(request, extra_context)

    def has_manage_permission(self, request):
        # Actions that write (here or at Sparkfly) need the model's change permission, which
        # view-only staff lack, even where the pages themselves stay read-only for everyone.
        opts = self.opts
        return request.user.has_perm(f"{opts.app_label}.{get_permission_codename('change', opts)}")

    def _confirmation(self, request, *, action: str, question: str, detail: str) -> TemplateResponse:
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": "Confirm: " + self.get_actions(request)[action][2],
            "question": question,
            "detail": detail,
            "action": action,
            "checkbox_name": helpers.ACTION_CHECKBOX_NAME,
            "selected": request.POST.getlist(helpers.ACTION_CHECKBOX_NAME),
            "select_across": request.POST.get("select_across", "0"),
        }
        return TemplateResponse(request, "admin/action_confirmation.html", context)


class SparkflyReadOnlyAdmin(PortalActionsMixin, admin.ModelAdmin):
    """What every page of this app shares: view-only, cheap on big tables, "Sync all"."""

    list_per_page = 100
    # The changelist's extra COUNT(*) of the whole table is a full scan of millions of rows.
    show_full_result_count = False
    actions = ["sync_all"]
    # "Sync all" acts on the resource, not on ticked rows, and is most needed when the mirror
    # is still empty.
    actions_without_selection = ("sync_all",)

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    def resources_to_sync(self) -> list[str] | None:
        """The ``sync.RESOURCES`` names "Sync all" queues; None means every resource."""
        raise NotImplementedError

    @admin.action(description="Sync all from Sparkfly", permissions=["manage"])
    def sync_all(self, request, queryset):
        resources = self.resources_to_sync()
        what = ", ".join(resources) if resources else "every Sparkfly resource"
        if not _confirmed(request):
            return self._confirmation(
                request,
                action="sync_all",
                question=f"Queue a full sync of {what} from Sparkfly?",
                detail="A worker reads every page of Sparkfly's lists and updates the mirror; "
                "this can take a while on a large account. You can follow it on the sync runs page.",
            )
        runs_link = format_html('<a href="{}">sync runs</a>', reverse("admin:sparkfly_sync_syncrun_changelist"))
        if queue_mirror_sync(resources):
            self.message_user(request, format_html("Queued a sync of {}. Follow it on {}.", what, runs_link))
        else:
            self.message_user(
                request,
                format_html(
                    "A Sparkfly sync is already waiting for a worker, so no other was queued; "
                    "try again once it has started. See {}.",
                    runs_link,
                ),
                messages.WARNING,
            )
        return None


def _confirmed(request) -> bool:
    return request.POST.get("confirmed") == "yes"


class SparkflyMirrorAdmin(SparkflyReadOnlyAdmin):
    """Base of the mirror models' pages: every field read-only, ``raw`` as escaped JSON,
    Sparkfly relations as links, exact searches, and the two actions."""

    actions = ["resync_selected", "sync_all"]
    # Integer columns a numeric search term is matched against exactly (Django's own search
    # would cast them to text, which no index serves).
    id_search_fields: tuple[str, ...] = ("sparkfly_id",)
    # Read-only blocks shown after the model's own fields on the change page.
    detail_fields: tuple[str, ...] = ()
    # Model fields shown through an admin method instead (to hide a secret).
    field_overrides: dict[str, str] = {}

    def __init__(self, model, admin_site):
        super().__init__(model, admin_site)
        # Each Sparkfly relation gets a "<name>_link" column for list_display and the change
        # page, and is joined into the page's query (no query per row).
        self.relations = [field.name for field in model._meta.concrete_fields if field.many_to_one]
        for name in self.relations:
            setattr(self, f"{name}_link", self._relation_display(name))

    def _relation_display(self, name: str):
        field = self.model._meta.get_field(name)

        @admin.display(description=field.verbose_name, ordering=field.attname)
        def display(obj):
            return _related_link(obj, name) or self.get_empty_value_display()

        return display

    def get_queryset(self, request):
        return super().get_queryset(request).select_related(*self.relations)

    def get_fields(self, request, obj=None):
        # The model's own fields first, then the mirror's bookkeeping, then the payload.
        own, bookkeeping = [], []
        for field in self.model._meta.concrete_fields:
            if field.primary_key or field.name == "raw":
                continue
            name = f"{field.name}_link" if field.many_to_one else self.field_overrides.get(field.name, field.name)
            (bookkeeping if field.name in MIRROR_BOOKKEEPING else own).append(name)
        return [*own, *bookkeeping, *self.detail_fields, "raw_payload"]

    def get_readonly_fields(self, request, obj=None):
        return self.get_fields(request, obj)

    @admin.display(description="last payload from Sparkfly")
    def raw_payload(self, obj):
        return _json_block(obj.raw)

    def get_search_results(self, request, queryset, search_term):
        if self.get_search_fields(request):
            results, may_have_duplicates = super().get_search_results(request, queryset, search_term)
        else:
            results, may_have_duplicates = queryset.none(), False
        if exact := self.exact_search(search_term.strip()):
            results = results | queryset.filter(Q.create(exact, connector=Q.OR))
        return results, may_have_duplicates

    def exact_search(self, term: str) -> list[Q]:
        """Index lookups a search term also matches (OR-ed with ``search_fields``)."""
        if term.isascii() and term.isdigit() and int(term) <= MAX_SPARKFLY_ID:
            return [Q(**{name: int(term)}) for name in self.id_search_fields]
        return []

    def resources_to_sync(self) -> list[str]:
        return [resource_for_model(self.model).name]

    def rows_to_resync(self, queryset):
        """The Sparkfly-backed rows behind the selection (itself, for a mirrored model)."""
        return queryset

    @admin.action(description="Resync selected from Sparkfly", permissions=["manage"])
    def resync_selected(self, request, queryset):
        rows = self.rows_to_resync(queryset)
        # Bounded count: a select-across of millions must not be counted in full.
        count = rows[: MAX_RESYNC_ROWS + 1].count()
        if count == 0:
            self.message_user(request, "Nothing to resync: no mirrored row behind the selection.", messages.WARNING)
            return None
        if count > MAX_RESYNC_ROWS:
            self.message_user(
                request,
                f"Select at most {MAX_RESYNC_ROWS} rows to resync (each is a Sparkfly request while you wait); "
                "use “Sync all from Sparkfly” for more.",
                messages.ERROR,
            )
            return None
        noun = model_ngettext(rows.model, count)
        if not _confirmed(request):
            return self._confirmation(
                request,
                action="resync_selected",
                question=f"Resync {count} {noun} from Sparkfly?",
                detail="Each is fetched again from the Sparkfly API now, one request per row, "
                "and its mirror row updated with what Sparkfly returns.",
            )
        try:
            outcome = resync_rows(rows, client=client_from_settings(interactive=True))
        except (ImproperlyConfigured, SparkflyError) as exc:
            self.message_user(request, f"Nothing was resynced: {exc}", messages.ERROR)
            return None
        if outcome.refreshed:
            refreshed = model_ngettext(rows.model, outcome.refreshed)
            self.message_user(request, f"Refreshed {outcome.refreshed} {refreshed} from Sparkfly.", messages.SUCCESS)
        if outcome.gone:
            gone = model_ngettext(rows.model, len(outcome.gone))
            self.message_user(
                request,
                f"Sparkfly no longer has {len(outcome.gone)} {gone} (Sparkfly ids {_listed(outcome.gone)}); "
                "they stay in the mirror.",
                messages.WARNING,
            )
        if outcome.failures:
            self.message_user(
                request,
                f"{len(outcome.failures)} could not be refreshed: {_listed(outcome.failures, 3)}",
                messages.ERROR,
            )
        return None


@admin.register(Member)
class MemberAdmin(SegmentAdminMixin, IssuanceAdminMixin, AttentiveMemberAdminMixin, SparkflyMirrorAdmin):
    list_display = ("identifier", "name", "email", "phone", "sparkfly_id", "sparkfly_updated_at", "synced_at")
    # "app" is the only mode Sparkfly documents; any other shows under "other or empty".
    list_filter = (
        known_values_filter("notification_mode", ["app"]),
        presence_filter("phone"),
        presence_filter("email"),
    )
    search_fields = ("identifier__exact",)
    search_help_text = "An exact identifier, email, phone number (any format) or Sparkfly id."
    detail_fields = ("credentials_table", "enrollments_table")

    def exact_search(self, term):
        # Normalised the way the sync stored them (emails lowercased, phones E.164), so
        # "(415) 555-0134" finds +14155550134 and the lookups use the plain indexes.
        lookups = super().exact_search(term)
        if "@" in term and (email := normalize_email(term)):
            lookups.append(Q(email=email))
        if phone := normalize_phone(term, settings.MEMBER_PHONE_REGION):
            lookups.append(Q(phone=phone))
        return lookups

    @admin.display(description="name")
    def name(self, member):
        return " ".join(part for part in (member.first_name, member.last_name) if part)

    @admin.display(description=f"credentials (newest {RELATED_ROWS_SHOWN})")
    def credentials_table(self, member):
        credentials = member.credentials.select_related("channel").order_by("-sparkfly_id")[:RELATED_ROWS_SHOWN]
        all_of_them = reverse("admin:sparkfly_sync_credential_changelist") + f"?member_id={member.sparkfly_id}"
        return _table(
            ("code", "status", "channel", "offer ids", "redeemed at"),
            (
                (_change_link(c), c.status, _related_link(c, "channel"), _listed(c.offer_ids), _when(c.redeemed_at))
                for c in credentials
            ),
            footer=format_html('<p><a href="{}">All credentials of this member</a></p>', all_of_them),
        )

    @admin.display(description=f"loyalty enrollments (newest {RELATED_ROWS_SHOWN})")
    def enrollments_table(self, member):
        enrollments = member.enrollments.select_related("program").order_by("-sparkfly_id")[:RELATED_ROWS_SHOWN]
        return _table(
            ("enrollment", "program", "status", "point balance", "tier id", "fraud risk"),
            (
                (_change_link(e, e.sparkfly_id), _related_link(e, "program"), e.status, e.point_balance, e.tier_id,
                 e.fraud_risk_level)
                for e in enrollments
            ),
        )


@admin.register(Merchant)
class MerchantAdmin(SparkflyMirrorAdmin):
    list_display = ("name", "is_active", "sparkfly_id", "sparkfly_updated_at", "synced_at")
    list_filter = ("is_active",)
    search_fields = ("name",)


@admin.register(Store)
class StoreAdmin(SparkflyMirrorAdmin):
    list_display = ("name", "number", "merchant_link", "city", "state", "is_active", "sparkfly_id", "synced_at")
    list_filter = ("is_active", "merchant", "state")
    search_fields = ("name", "number__exact", "city")


@admin.register(Channel)
class ChannelAdmin(SparkflyMirrorAdmin):
    list_display = (
        "name", "allow_sms_keyword", "allow_hmac", "conversion_callback", "callback_state", "sparkfly_id", "synced_at",
    )
    list_filter = ("allow_sms_keyword", "allow_hmac")
    search_fields = ("name",)
    field_overrides = {"conversion_callback_url": "conversion_callback"}
    detail_fields = ("callback_template", "callback_state")
    actions = ["resync_selected", "sync_all", "set_conversion_callback", "rotate_and_set_conversion_callback"]

    def get_queryset(self, request):
        # Each channel's endpoint in one more query for the whole page, not one per row.
        return super().get_queryset(request).prefetch_related("conversion_endpoints")

    @admin.display(description="conversion callback URL")
    def conversion_callback(self, channel):
        # Only where it points: the path holds our webhook endpoint's secret.
        url = urlsplit(channel.conversion_callback_url)
        if not url.hostname:
            return HIDDEN if channel.conversion_callback_url else self.get_empty_value_display()
        return f"{url.scheme}://{url.hostname}/… (path hidden)"

    @admin.display(description="conversion callback")
    def callback_template(self, channel):
        endpoint = _endpoint_of(channel)
        if endpoint is None:
            return NO_ENDPOINT_YET
        return format_html(
            "<code>{}</code><br>The URL to give Sparkfly, its secret masked. The channel list's action "
            "“Set the conversion callback at Sparkfly” sets it; <code>manage.py sparkfly_callbacks "
            "--show-secrets</code> prints it whole.",
            callbacks.conversion_callback_template(endpoint, masked=True),
        )

    @admin.display(description="Sparkfly has it")
    def callback_state(self, channel):
        endpoint = _endpoint_of(channel)
        if endpoint is None:
            return "no endpoint yet"
        return callbacks.STATUS_WORDS[callbacks.callback_status(endpoint, channel)]

    @admin.action(description="Set the conversion callback at Sparkfly", permissions=["manage"])
    def set_conversion_callback(self, request, queryset):
        return self._set_callbacks(request, queryset, action="set_conversion_callback", rotate=False)

    @admin.action(description="Rotate the callback secret and set it at Sparkfly", permissions=["manage"])
    def rotate_and_set_conversion_callback(self, request, queryset):
        return self._set_callbacks(request, queryset, action="rotate_and_set_conversion_callback", rotate=True)

    def _set_callbacks(self, request, queryset, *, action: str, rotate: bool):
        count = queryset[: MAX_RESYNC_ROWS + 1].count()  # bounded: a select-across is not counted in full
        if count > MAX_RESYNC_ROWS:
            self.message_user(
                request,
                f"Select at most {MAX_RESYNC_ROWS} channels (each is a Sparkfly request while you wait).",
                messages.ERROR,
            )
            return None
        noun = model_ngettext(queryset, count)
        if not _confirmed(request):
            grace = settings.SPARKFLY_CALLBACK_SECRET_GRACE_HOURS
            return self._confirmation(
                request,
                action=action,
                question=(
                    f"Give {count} {noun} a new callback secret and set the new URL at Sparkfly?"
                    if rotate
                    else f"Set the conversion callback of {count} {noun} at Sparkfly?"
                ),
                detail=(
                    f"The previous secret keeps working for {grace:g} hours, so redemptions Sparkfly reports "
                    "meanwhile are not lost. "
                    if rotate
                    else ""
                )
                + "Each channel's conversion_callback_url is replaced at Sparkfly now, one request per channel.",
            )
        try:
            callbacks.check_public_url()
            client = client_from_settings(interactive=True)
        except (ImproperlyConfigured, callbacks.UnreachableURL) as exc:
            self.message_user(request, f"Nothing was changed: {exc}", messages.ERROR)
            return None
        endpoints = {endpoint.channel_id: endpoint for endpoint in callbacks.ensure_conversion_endpoints()}
        done = []
        for channel in queryset:
            endpoint = endpoints[channel.sparkfly_id]
            if rotate:
                callbacks.rotate_conversion_secret(endpoint)
            try:
                callbacks.apply_conversion_callback(endpoint=endpoint, client=client)
            except SparkflyError as exc:
                if rotate:
                    until = _when(endpoint.previous_secret_expires_at)
                    text = (
                        f"{channel}: the secret was rotated, but the new URL could not be set at Sparkfly: {exc} "
                        f"Sparkfly keeps calling the previous one, accepted until {until}: set it again before then."
                    )
                else:
                    text = f"{channel}: the conversion callback was not set: {exc}"
                self.message_user(request, text, messages.ERROR)
                continue
            done.append(str(channel))
        if done:
            what = "Rotated the callback secret and set the new URL" if rotate else "Set the conversion callback"
            self.message_user(request, f"{what} at Sparkfly for {_listed(done)}.", messages.SUCCESS)
        return None


@admin.register(Offer)
class OfferAdmin(SparkflyMirrorAdmin):
    list_display = ("name", "status", "merchant_link", "activates_at", "expires_at", "limits", "sparkfly_id")
    list_filter = (known_values_filter("status", Offer.Status.values), "merchant")
    search_fields = ("name",)
    date_hierarchy = "expires_at"  # offers are few, so its date queries stay cheap
    detail_fields = ("channel_links_table",)

    @admin.display(description="redemption limits")
    def limits(self, offer):
        limits = (
            ("in total", offer.max_redemptions),
            ("per member", offer.max_redemptions_per_member),
            ("per member per day", offer.max_redemptions_per_member_per_day),
        )
        return " · ".join(f"{value} {label}" for label, value in limits if value is not None) or "none"

    @admin.display(description="channels and their XIDs")
    def channel_links_table(self, offer):
        links = offer.channel_links.select_related("channel").order_by("channel_id")[:RELATED_ROWS_SHOWN]
        return _table(
            ("channel", "XID", "link"),
            ((_related_link(link, "channel"), link.xid, _change_link(link, "details")) for link in links),
        )


@admin.register(OfferChannel)
class OfferChannelAdmin(SparkflyMirrorAdmin):
    list_display = ("xid", "offer_link", "channel_link", "synced_at")
    list_filter = ("channel",)
    search_fields = ("xid__exact",)
    id_search_fields = ("offer_id", "channel_id")
    search_help_text = "An exact XID, or a Sparkfly offer or channel id."

    # Links are not fetched on their own: Sparkfly sends them inside their offer.
    def resources_to_sync(self) -> list[str]:
        return [resource_for_model(Offer).name]

    def rows_to_resync(self, queryset):
        return Offer.objects.filter(sparkfly_id__in=queryset.values("offer_id"))


@admin.register(Credential)
class CredentialAdmin(SparkflyMirrorAdmin):
    list_display = ("__str__", "status", "member_link", "channel_link", "offer_ids", "redeemed_at", "sparkfly_id")
    # Sparkfly's credential states (the status column accepts any other it adds).
    list_filter = (known_values_filter("status", ["open", "redeemed", "voided"]), "channel")
    search_fields = ("identifier__exact",)
    id_search_fields = ("sparkfly_id", "member_id")
    search_help_text = "An exact code, a credential's Sparkfly id or its member's Sparkfly id."


@admin.register(LoyaltyProgram)
class LoyaltyProgramAdmin(SparkflyMirrorAdmin):
    list_display = ("name", "status", "sparkfly_id", "sparkfly_updated_at", "synced_at")
    list_filter = ("status",)  # programs are few: listing their statuses is cheap
    search_fields = ("name",)


@admin.register(LoyaltyEnrollment)
class LoyaltyEnrollmentAdmin(SparkflyMirrorAdmin):
    list_display = (
        "sparkfly_id", "member_link", "program_link", "status", "point_balance", "historical_points", "tier_id",
        "fraud_risk_level", "external_id", "synced_at",
    )
    list_filter = (
        known_values_filter("status", LoyaltyEnrollment.Status.values),
        known_values_filter("fraud_risk_level", LoyaltyEnrollment.FraudRiskLevel.values),
        "program",
    )
    search_fields = ("external_id__exact",)
    id_search_fields = ("sparkfly_id", "member_id")
    search_help_text = "An exact external id, an enrollment's Sparkfly id or its member's Sparkfly id."


@admin.register(SyncRun)
class SyncRunAdmin(SparkflyReadOnlyAdmin):
    list_display = (
        "resource", "status", "started_at", "run_duration", "pages", "created", "updated", "unchanged", "errors",
        "resumed",
    )
    list_filter = ("status", "resource")
    date_hierarchy = "started_at"
    fields = readonly_fields = (
        "resource", "status", "started_at", "finished_at", "run_duration", "pages", "created", "updated",
        "unchanged", "errors", "resumed", "failure", "error_list", "checkpoint",
    )

    def resources_to_sync(self) -> None:
        return None

    @admin.display(description="duration")
    def run_duration(self, run):
        duration = run.duration
        return f"{duration.total_seconds():.1f} s" if duration is not None else "not finished"

    @admin.display(description="error samples")
    def error_list(self, run):
        return _json_block(run.error_samples) if run.error_samples else "none"


# =================================================================================================
# Inbound: the endpoints Sparkfly calls, every request that reached them, what came of them.
# =================================================================================================

# Requeueing locks and queues each selected record while the admin waits.
MAX_REQUEUE_ROWS = 1000
LIST_FAILURE_CHARS = 80
# The statuses the webhooks answer (sparkfly_sync.webhooks); any other shows under "other".
ANSWERED_STATUSES = ("200", "202", "400", "401", "404", "405", "410", "413", "415")
REJECTION_WINDOW = timedelta(hours=24)


def _parsed_uuid(text: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(text.strip())
    except ValueError:
        return None


def _uuid_or_id_search(term: str, *, uuid_field: str, id_fields: tuple[str, ...] = ()) -> Q | None:
    """An exact UUID or a Sparkfly id as index lookups (Django's own search would cast the
    columns to text, which no index serves, and refuse a malformed UUID with an error)."""
    term = term.strip()
    if parsed := _parsed_uuid(term):
        return Q(**{uuid_field: parsed})
    if id_fields and term.isascii() and term.isdigit() and int(term) <= MAX_SPARKFLY_ID:
        return Q.create([(name, int(term)) for name in id_fields], connector=Q.OR)
    return None


class InboundAdmin(PortalActionsMixin, admin.ModelAdmin):
    """The pages of what Sparkfly sends: nothing added or deleted here, writes only through
    the actions (which call the services), big tables kept cheap."""

    list_per_page = 100
    show_full_result_count = False
    actions: list[str] = []

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    def _selection_size(self, request, queryset, limit: int) -> int | None:
        """How many rows are selected, or None (and an error shown) when over ``limit``."""
        count = queryset[: limit + 1].count()  # bounded: a select-across is not counted in full
        if count > limit:
            self.message_user(
                request,
                f"Select at most {limit} {queryset.model._meta.verbose_name_plural} at a time; narrow the list "
                "with the filters.",
                messages.ERROR,
            )
            return None
        return count


@admin.register(ConversionEndpoint)
class ConversionEndpointAdmin(InboundAdmin):
    list_display = ("channel_link", "uuid", "is_enabled", "status", "created_at", "secret_rotated_at")
    list_display_links = ("uuid",)  # the channel column is a link of its own
    list_select_related = ("channel",)
    list_filter = ("is_enabled",)
    search_fields = ("uuid",)  # matched exactly, with the channel id: see get_search_results
    search_help_text = "An endpoint's exact UUID, or its channel's Sparkfly id."
    # The secret is never among them: the template shows it masked.
    fields = readonly_fields = (
        "channel_link", "uuid", "is_enabled", "status", "callback_template", "conv_id_keys", "created_at",
        "secret_rotated_at", "previous_secret_expires_at",
    )
    actions = ["enable", "disable", "rotate"]

    def get_search_results(self, request, queryset, search_term):
        if not search_term.strip():
            return queryset, False
        lookup = _uuid_or_id_search(search_term, uuid_field="uuid", id_fields=("channel_id",))
        if lookup is None:
            return queryset.none(), False
        # Through a subquery: a filter on channel_id itself would let Django make the list's
        # channel join an inner one, hiding an endpoint whose channel is not mirrored (the
        # relation has no database constraint).
        return queryset.filter(pk__in=ConversionEndpoint.objects.filter(lookup).values("pk")), False

    @admin.display(description="channel", ordering="channel_id")
    def channel_link(self, endpoint):
        return _related_link(endpoint, "channel") or self.get_empty_value_display()

    @admin.display(description="Sparkfly has it")
    def status(self, endpoint):
        channel = _mirrored(endpoint, "channel")
        if channel is None:
            return "channel not mirrored"
        return callbacks.STATUS_WORDS[callbacks.callback_status(endpoint, channel)]

    @admin.display(description="conversion callback")
    def callback_template(self, endpoint):
        return format_html("<code>{}</code>", callbacks.conversion_callback_template(endpoint, masked=True))

    @admin.action(description="Enable selected endpoints", permissions=["manage"])
    def enable(self, request, queryset):
        changed = callbacks.set_enabled(queryset, enabled=True)
        self.message_user(request, f"Enabled {changed} {model_ngettext(queryset, changed)}.", messages.SUCCESS)

    @admin.action(description="Disable selected endpoints (they answer 410)", permissions=["manage"])
    def disable(self, request, queryset):
        changed = callbacks.set_enabled(queryset, enabled=False)
        self.message_user(
            request,
            f"Disabled {changed} {model_ngettext(queryset, changed)}: they answer 410 Gone and record nothing new.",
            messages.SUCCESS,
        )

    @admin.action(description="Rotate the secret of selected endpoints", permissions=["manage"])
    def rotate(self, request, queryset):
        count = self._selection_size(request, queryset, MAX_RESYNC_ROWS)
        if count is None:
            return None
        grace = settings.SPARKFLY_CALLBACK_SECRET_GRACE_HOURS
        if not _confirmed(request):
            return self._confirmation(
                request,
                action="rotate",
                question=f"Give {count} {model_ngettext(queryset, count)} a new secret?",
                detail=f"The previous secret keeps working for {grace:g} hours. Sparkfly keeps calling the "
                "previous URL until it is given the new one: use “Rotate the callback secret and set it at "
                "Sparkfly” on the channels page to do both at once.",
            )
        endpoints = list(queryset)
        for endpoint in endpoints:
            callbacks.rotate_conversion_secret(endpoint)
        until = _when(timezone.now() + timedelta(hours=grace))
        self.message_user(
            request,
            f"Rotated the secret of {len(endpoints)} {model_ngettext(queryset, len(endpoints))} (channels "
            f"{_listed([e.channel_id for e in endpoints])}); the previous secrets are accepted until {until}. "
            "Set the new URLs at Sparkfly before then (“Set the conversion callback at Sparkfly” on the "
            "channels page, or manage.py sparkfly_callbacks --apply).",
            messages.WARNING,
        )
        return None


def _mirrored(obj, name: str):
    """A related row from the select_related cache, or None while it is not mirrored."""
    try:
        return getattr(obj, name)
    except ObjectDoesNotExist:
        return None


def _signing_key_state(endpoint: NotificationEndpoint) -> str:
    if not endpoint.secret:
        return "No signing key is held: register at Sparkfly, or paste the callback's signing_key."
    if is_unreadable(endpoint.secret):
        return (
            "The stored signing key cannot be decrypted with this deployment's SECRET_KEY and "
            "FIELD_ENCRYPTION_SALTS: register at Sparkfly again, or paste it."
        )
    masked = "••••" + endpoint.secret[-4:] if len(endpoint.secret) > 8 else "••••"
    return f"A signing key is held: {masked}."


class NotificationEndpointForm(forms.ModelForm):
    # Write-only, as the Attentive API key: the stored key never reaches the page, only its
    # mask in the help text; an empty field keeps it.
    new_signing_key = forms.CharField(
        label="New signing key",
        required=False,
        max_length=NotificationEndpoint._meta.get_field("secret").max_length,
        strip=True,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
    )

    class Meta:
        model = NotificationEndpoint
        fields = ("is_enabled",)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["new_signing_key"].help_text = format_html(
            "{} Paste the callback's signing_key when Sparkfly gave you a new one; the previous key is still "
            "accepted for {} hours. Write-only: stored encrypted, never shown.",
            _signing_key_state(self.instance),
            f"{settings.SPARKFLY_CALLBACK_SECRET_GRACE_HOURS:g}",
        )

    def clean_new_signing_key(self):
        key = self.cleaned_data["new_signing_key"]
        if any(character.isspace() for character in key):
            raise forms.ValidationError("A signing key has no spaces or line breaks: paste the key alone.")
        return key


@admin.register(NotificationEndpoint)
class NotificationEndpointAdmin(InboundAdmin):
    form = NotificationEndpointForm
    list_display = ("external_id", "sparkfly_callback_id", "event_list", "is_enabled", "signing_key_held")
    fields = (
        "external_id", "url", "sparkfly_callback_id", "event_list", "is_enabled", "new_signing_key",
        "secret_rotated_at", "previous_secret_expires_at", "created_at",
    )
    readonly_fields = (
        "external_id", "url", "sparkfly_callback_id", "event_list", "signing_key", "secret_rotated_at",
        "previous_secret_expires_at", "created_at",
    )
    actions = ["register"]
    # With nothing ticked (or none yet), it registers the portal's endpoint.
    actions_without_selection = ("register",)

    def has_change_permission(self, request, obj=None):
        return admin.ModelAdmin.has_change_permission(self, request, obj)

    def get_fields(self, request, obj=None):
        if self.has_change_permission(request, obj):
            return self.fields
        # What staff who may only view it see instead of the key's input.
        return tuple("signing_key" if name == "new_signing_key" else name for name in self.fields)

    def save_model(self, request, obj, form, change):
        # Only the switch is written as a field: saving the key field unchanged would encrypt
        # a key this deployment cannot decrypt a second time, beyond recovery.
        obj.save(update_fields=["is_enabled"])
        if key := form.cleaned_data.get("new_signing_key"):
            rotate_secret(obj, new_secret=key)

    @admin.display(description="URL Sparkfly posts to")
    def url(self, endpoint):
        return callbacks.notification_url(endpoint)

    @admin.display(description="subscribed events")
    def event_list(self, endpoint):
        return ", ".join(endpoint.events) or "none"

    @admin.display(description="signing key held", boolean=True)
    def signing_key_held(self, endpoint):
        return bool(endpoint.secret) and not is_unreadable(endpoint.secret)

    @admin.display(description="signing key")
    def signing_key(self, endpoint):
        return _signing_key_state(endpoint)

    @admin.action(description="Register at Sparkfly", permissions=["manage"])
    def register(self, request, queryset):
        external_ids = list(queryset.values_list("external_id", flat=True)[: MAX_RESYNC_ROWS + 1])
        if not external_ids:
            external_ids = [callbacks.DEFAULT_EXTERNAL_ID]
        if not _confirmed(request):
            return self._confirmation(
                request,
                action="register",
                question=f"Register {_listed(external_ids)} at Sparkfly?",
                detail="Sparkfly is told to post the portal's events to this endpoint: its callback is created "
                "(or replaced when it points elsewhere) and one subscription added per missing event.",
            )
        try:
            callbacks.check_public_url()
            client = client_from_settings(interactive=True)
        except (ImproperlyConfigured, callbacks.UnreachableURL) as exc:
            self.message_user(request, f"Nothing was registered: {exc}", messages.ERROR)
            return None
        for external_id in external_ids:
            try:
                endpoint = callbacks.register_notifications(client=client, external_id=external_id)
            except SparkflyError as exc:
                self.message_user(request, f"“{external_id}” was not registered at Sparkfly: {exc}", messages.ERROR)
                continue
            self.message_user(
                request,
                f"Registered “{external_id}” at Sparkfly as callback {endpoint.sparkfly_callback_id}, subscribed "
                f"to {', '.join(endpoint.events)}.",
                messages.SUCCESS,
            )
        return None


@admin.register(InboundRequest)
class InboundRequestAdmin(InboundAdmin):
    list_display = ("received_at", "kind", "method", "status_code", "outcome", "remote_addr", "endpoint_uuid")
    list_filter = ("outcome", known_values_filter("status_code", ANSWERED_STATUSES), "kind")
    search_fields = ("endpoint_uuid__exact",)
    search_help_text = "An endpoint's exact UUID."
    fields = readonly_fields = (
        "received_at", "kind", "method", "status_code", "outcome", "errors_block", "remote_addr", "endpoint_link",
        "headers_block", "query", "body_text", "body_size", "redemption_link", "notification_link",
    )

    def get_search_results(self, request, queryset, search_term):
        return super().get_search_results(request, queryset, search_term.strip())

    def changelist_view(self, request, extra_context=None):
        since = timezone.now() - REJECTION_WINDOW
        counts = (
            InboundRequest.objects.filter(outcome=InboundRequest.Outcome.REJECTED, received_at__gte=since)
            .order_by("status_code")
            .values_list("status_code")
            .annotate(Count("pk"))
        )
        rejections = [(status, HTTPStatus(status).phrase if status in _HTTP_STATUSES else "", n) for status, n in counts]
        context = {
            **(extra_context or {}),
            "rejections": rejections,
            "rejections_total": sum(n for _, _, n in rejections),
            "rejected_outcome": InboundRequest.Outcome.REJECTED.value,
        }
        return super().changelist_view(request, context)

    @admin.display(description="why it was rejected")
    def errors_block(self, request_row):
        return _json_block(request_row.errors) if request_row.errors else "-"

    @admin.display(description="headers")
    def headers_block(self, request_row):
        return _json_block(request_row.headers)

    @admin.display(description="body (as UTF-8)")
    def body_text(self, request_row):
        body = bytes(request_row.body or b"")
        if not body:
            return "(empty)"
        # Escaped by format_html: the body is whatever the caller sent, "<script>" included.
        return format_html('<pre style="white-space: pre-wrap">{}</pre>', body.decode("utf-8", errors="replace"))

    @admin.display(description="endpoint")
    def endpoint_link(self, request_row):
        model = ConversionEndpoint if request_row.kind == InboundRequest.Kind.CONVERSION else NotificationEndpoint
        parsed = _parsed_uuid(request_row.endpoint_uuid)
        endpoint = model.objects.filter(uuid=parsed).first() if parsed else None
        if endpoint is None:
            return f"{request_row.endpoint_uuid or '(none)'} (no such endpoint)"
        return _change_link(endpoint, f"{endpoint} ({request_row.endpoint_uuid})")

    @admin.display(description="redemption")
    def redemption_link(self, request_row):
        return _change_link(request_row.redemption) if request_row.redemption_id else "-"

    @admin.display(description="notification")
    def notification_link(self, request_row):
        return _change_link(request_row.notification) if request_row.notification_id else "-"


_HTTP_STATUSES = {status.value for status in HTTPStatus}


class ForwardedRecordAdmin(InboundAdmin):
    """Redemptions and notifications: their forwarding state, and "Retry forwarding"."""

    list_filter = ("state",)
    actions = ["retry_forwarding"]

    @admin.display(description="failure", ordering="failure")
    def failure_excerpt(self, record):
        return Truncator(record.failure).chars(LIST_FAILURE_CHARS)

    @admin.display(description="Attentive delivery")
    def delivery_link(self, record):
        if not record.delivery_id:
            return "none yet"
        delivery = record.delivery
        url = reverse("admin:attentive_sync_delivery_change", args=[delivery.pk])
        return format_html('<a href="{}">{} ({})</a>', url, delivery.external_event_id, delivery.get_status_display())

    @admin.display(description=f"requests that carried it (newest {RELATED_ROWS_SHOWN})")
    def requests_table(self, record):
        rows = record.requests.order_by("-received_at")[:RELATED_ROWS_SHOWN]
        return _table(
            ("received at", "answer", "outcome", "source address"),
            ((_change_link(r, _when(r.received_at)), r.status_code, r.outcome, r.remote_addr) for r in rows),
        )

    @admin.display(description="payload")
    def payload_block(self, record):
        return _json_block(record.payload)

    @admin.action(description="Retry forwarding", permissions=["manage"])
    def retry_forwarding(self, request, queryset):
        selected = self._selection_size(request, queryset, MAX_REQUEUE_ROWS)
        if selected is None:
            return None
        queued = forwarding.requeue(queryset)
        if queued:
            self.message_user(
                request, f"Queued {queued} {model_ngettext(queryset, queued)} for another try.", messages.SUCCESS
            )
        if left := selected - queued:
            self.message_user(
                request,
                f"Left {left} {model_ngettext(queryset, left)} alone: already forwarded, processed or skipped. "
                "A forwarded event is sent again from its Attentive delivery (“Replay”).",
                messages.WARNING,
            )
        return None


@admin.register(Redemption)
class RedemptionAdmin(ForwardedRecordAdmin):
    list_display = (
        "received_at", "credential_id", "offer_id", "channel_id", "redeemed_at", "state", "attempts",
        "failure_excerpt",
    )
    search_fields = ("dedup_key",)  # matched exactly, with the credential id: see get_search_results
    search_help_text = "An exact Sparkfly credential id, or a dedup key (externalEventId)."
    fields = readonly_fields = (
        "dedup_key", "state", "attempts", "failure", "forwarded_at", "delivery_link", "received_at", "redeemed_at",
        "credential_id", "offer_id", "offer_ids", "xid", "channel_id", "store_id", "credential_status", "sf_uid",
        "sf_ac", "conv_ids", "endpoint", "requests_table",
    )

    def get_search_results(self, request, queryset, search_term):
        if not search_term.strip():
            return queryset, False
        lookup = _uuid_or_id_search(search_term, uuid_field="dedup_key", id_fields=("credential_id",))
        return (queryset.filter(lookup) if lookup else queryset.none()), False


@admin.register(Notification)
class NotificationAdmin(ForwardedRecordAdmin):
    list_display = ("received_at", "event_name", "event_id", "occurred_at", "state", "attempts", "failure_excerpt")
    list_filter = ("state", known_values_filter("event_name", HANDLED_EVENTS))
    search_fields = ("event_id__exact",)
    search_help_text = "An event's exact id."
    fields = readonly_fields = (
        "event_id", "event_name", "state", "attempts", "failure", "processed_at", "delivery_link", "occurred_at",
        "received_at", "endpoint", "payload_block", "requests_table",
    )

    def get_search_results(self, request, queryset, search_term):
        return super().get_search_results(request, queryset, search_term.strip())

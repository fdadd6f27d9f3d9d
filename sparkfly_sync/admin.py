"""Admin of the Sparkfly mirror: read-only pages over what Sparkfly owns, and two actions.

* Sparkfly owns every mirrored field (the next sync would overwrite an edit), and only the
  sync services write the mirror, so no row is added, changed or deleted here.
* "Resync selected from Sparkfly" fetches the chosen rows again now (``sync.resync_rows``);
  "Sync all from Sparkfly" queues the background sync of the whole resource
  (``tasks.queue_mirror_sync``). Both ask for confirmation first, as dj-stripe's actions do:
  one calls Sparkfly once per row while the admin waits, the other starts a full scan.
* Pages stay cheap on tables of millions of rows: no second COUNT(*), relations joined into
  the page's one query, searches that use indexes, and no filter or date hierarchy that
  lists a big column's distinct values (each would scan the whole table on every page view).
"""

from __future__ import annotations

import json
from urllib.parse import urlsplit

from django.conf import settings
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.admin.utils import model_ngettext
from django.contrib.auth import get_permission_codename
from django.core.exceptions import ImproperlyConfigured, ObjectDoesNotExist
from django.db.models import Q
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import formats, timezone
from django.utils.html import format_html, format_html_join

from sparkfly_sync.client import client_from_settings
from sparkfly_sync.errors import SparkflyError
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
from sparkfly_sync.payloads import normalize_email, normalize_phone
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


class SparkflyReadOnlyAdmin(admin.ModelAdmin):
    """What every page of this app shares: view-only, cheap on big tables, "Sync all"."""

    list_per_page = 100
    # The changelist's extra COUNT(*) of the whole table is a full scan of millions of rows.
    show_full_result_count = False
    actions = ["sync_all"]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    def has_sync_permission(self, request):
        # The actions write the mirror, so they need the model's change permission, which
        # view-only staff lack (the pages themselves stay read-only for everyone).
        opts = self.opts
        return request.user.has_perm(f"{opts.app_label}.{get_permission_codename('change', opts)}")

    def resources_to_sync(self) -> list[str] | None:
        """The ``sync.RESOURCES`` names "Sync all" queues; None means every resource."""
        raise NotImplementedError

    def changelist_view(self, request, extra_context=None):
        # "Sync all" acts on the resource, not on ticked rows, and is most needed when the
        # mirror is still empty: run it with nothing ticked, as Django would refuse it.
        if (
            request.method == "POST"
            and request.POST.get("action") == "sync_all"
            and not request.POST.getlist(helpers.ACTION_CHECKBOX_NAME)
        ):
            post = request.POST.copy()
            post.setlist(helpers.ACTION_CHECKBOX_NAME, ["all"])
            post["select_across"] = "1"
            request.POST = post
        return super().changelist_view(request, extra_context)

    @admin.action(description="Sync all from Sparkfly", permissions=["sync"])
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
        if term.isascii() and term.isdigit() and int(term) < 2**63:
            return [Q(**{name: int(term)}) for name in self.id_search_fields]
        return []

    def resources_to_sync(self) -> list[str]:
        return [resource_for_model(self.model).name]

    def rows_to_resync(self, queryset):
        """The Sparkfly-backed rows behind the selection (itself, for a mirrored model)."""
        return queryset

    @admin.action(description="Resync selected from Sparkfly", permissions=["sync"])
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
class MemberAdmin(SparkflyMirrorAdmin):
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
    list_display = ("name", "allow_sms_keyword", "allow_hmac", "conversion_callback", "sparkfly_id", "synced_at")
    list_filter = ("allow_sms_keyword", "allow_hmac")
    search_fields = ("name",)
    field_overrides = {"conversion_callback_url": "conversion_callback"}

    @admin.display(description="conversion callback URL")
    def conversion_callback(self, channel):
        # Only where it points: the path holds our webhook endpoint's secret.
        url = urlsplit(channel.conversion_callback_url)
        if not url.hostname:
            return HIDDEN if channel.conversion_callback_url else self.get_empty_value_display()
        return f"{url.scheme}://{url.hostname}/… (path hidden)"


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

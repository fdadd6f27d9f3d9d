"""Admin of the Attentive side: its settings (one row, the API key write-only) and the outbox.

* The settings page edits the one ``AttentiveSettings`` row. The API key is write-only: the
  form never holds the stored key, only its mask in the help text; an empty field keeps it
  and "Clear the stored key" removes it. Saving rewrites the stored key only when it was
  changed: a key this deployment cannot decrypt any more must not be encrypted a second time
  under the new keys, where even restoring the old ones would not bring it back. A new API base
  URL is saved only with the key entered again (or cleared) in the same save, and only to a host
  the outbound allowlist names (README "Outbound HTTP"): editing the settings never sends the
  stored key somewhere new.
* "Verify connection" asks Attentive whom the stored key belongs to (``GET /v1/me``).
* Deliveries are an audit log: read-only, their attempts inline, counts by status above the
  list, and two actions calling the delivery services: "Retry now", and "Replay", which asks
  first because it sends delivered events to Attentive again.
* Subscription states and identity links are read-only records of what Attentive answered;
  they are changed from the pages of the people they belong to (members, on the Sparkfly side).
"""

from __future__ import annotations

import json
from functools import partial

from django import forms
from django.conf import settings as django_settings
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.admin.utils import model_ngettext
from django.contrib.auth import get_permission_codename
from django.core.exceptions import PermissionDenied
from django.db.models import Count
from django.forms.models import BaseInlineFormSet
from django.http import HttpResponseNotAllowed, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join
from django.utils.text import Truncator
from django.utils.timesince import timesince

from attentive_sync import delivery as delivery_services
from attentive_sync.client import PRODUCTION_URL, AttentiveClient
from attentive_sync.errors import AttentiveAuthError, AttentiveError
from attentive_sync.models import AttentiveSettings, Delivery, DeliveryAttempt, IdentityLink, SubscriptionState
from attentive_sync.registry import event_types
from attentive_sync import segments
from attentive_sync.segments import SegmentPush
from attentive_sync.texts import TextSend
from attentive_sync.subscriptions import NotConfigured, client_from_settings as subscriptions_client

# Both actions lock and queue every selected delivery while the admin waits: a few thousand
# finish well within a proxy's timeout. Waiting deliveries are queued again by the sweeper.
MAX_ACTION_ROWS = 1000
# A delivery retried through a long outage has many attempts; its page lists the newest.
ATTEMPTS_SHOWN = 50
LIST_ERROR_CHARS = 80
RESPONSE_EXCERPT_CHARS = 300


def _hours(duration) -> str:
    return f"{duration.total_seconds() / 3600:g} h"


# --- settings ----------------------------------------------------------------------------------


def _stored_key(settings: AttentiveSettings) -> str:
    if settings.api_key_unreadable:
        return "The stored key cannot be decrypted with this deployment's keys: enter it again."
    if settings.key:
        return f"Stored key: {settings.masked_api_key}. Leave empty to keep it."
    return "No key is stored."


class AttentiveSettingsForm(forms.ModelForm):
    # Not the model's ``api_key``: a model field in the form would carry the stored key as its
    # initial value and, left empty, overwrite it. This one starts empty and is applied in save().
    new_api_key = forms.CharField(
        label="API key",
        required=False,
        max_length=AttentiveSettings._meta.get_field("api_key").max_length,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
    )
    clear_api_key = forms.BooleanField(
        label="Clear the stored key", required=False, help_text="Nothing is sent to Attentive until a new key is set."
    )
    forwarded_event_types = forms.MultipleChoiceField(
        label="Forwarded event types",
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text="Ticked types are recorded and sent to Attentive; events of an unticked type are dropped.",
    )

    class Meta:
        model = AttentiveSettings
        fields = (
            "api_url", "sign_up_source_id", "enabled", "rate_limit_per_second", "max_event_age",
            "auto_subscribe_on_enrollment",
            "push_loyalty_attributes",
        )
        # Attentive is only served over https: a URL typed without a scheme means that.
        field_classes = {"api_url": partial(forms.URLField, assume_scheme="https")}
        help_texts = {
            "max_event_age": AttentiveSettings._meta.get_field("max_event_age").help_text
            + " As hours:minutes:seconds, e.g. 08:00:00.",
        }

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["new_api_key"].help_text = format_html(
            "{} Write-only: stored encrypted, never shown.", _stored_key(self.instance)
        )
        if "api_url" in self.fields:  # not for staff who may only view the settings
            self.fields["api_url"].help_text = (
                f"Attentive: {PRODUCTION_URL}. Allowed hosts: {', '.join(django_settings.ATTENTIVE_ALLOWED_HOSTS)}"
                + (" and this machine's loopback (sandboxes)" if django_settings.OUTBOUND_ALLOW_LOOPBACK else "")
                + " (ATTENTIVE_ALLOWED_HOSTS). Changing it needs the API key entered again."
            )
        registered = event_types()
        self.fields["forwarded_event_types"].choices = [
            (event_type, f"{label} ({event_type})") for event_type, label in registered.items()
        ]
        self.initial["forwarded_event_types"] = [t for t in registered if self.instance.forwards(t)]

    def clean(self):
        cleaned = super().clean()
        if cleaned.get("new_api_key") and cleaned.get("clear_api_key"):
            raise forms.ValidationError("Either enter a new API key or clear the stored one, not both.")
        # The stored key goes to a new URL only when the person changing it enters the key again:
        # whoever may edit the settings must not learn the key by pointing the portal elsewhere.
        new_url, old_url = cleaned.get("api_url"), self.initial.get("api_url") or ""
        if (
            new_url
            and new_url.rstrip("/") != old_url.rstrip("/")
            and self.instance.key
            and not (cleaned.get("new_api_key") or cleaned.get("clear_api_key"))
        ):
            self.add_error(
                "api_url",
                "The API base URL changed: enter the API key again in this save (or clear the stored key). "
                "The stored key is never sent to a new URL without the person who knows it.",
            )
        return cleaned

    @property
    def changes_api_key(self) -> bool:
        return bool(self.cleaned_data.get("new_api_key") or self.cleaned_data.get("clear_api_key"))

    def save(self, commit=True):
        settings = self.instance
        if self.cleaned_data["clear_api_key"]:
            settings.api_key = ""
        elif self.cleaned_data["new_api_key"]:
            settings.api_key = self.cleaned_data["new_api_key"]
        registered = event_types()
        forwarded = set(self.cleaned_data["forwarded_event_types"])
        # Types no caller registers any more stay as they were: the page cannot show them.
        settings.disabled_event_types = [
            *(event_type for event_type in settings.disabled_event_types if event_type not in registered),
            *(event_type for event_type in registered if event_type not in forwarded),
        ]
        return super().save(commit)


def verify_connection(settings: AttentiveSettings) -> tuple[int, str]:
    """The message level and text saying whether Attentive accepts the stored key."""
    if not settings.key:
        return messages.ERROR, "No API key is stored: enter one and save before verifying the connection."
    if settings.api_key_unreadable:
        return messages.ERROR, (
            "The stored API key cannot be decrypted with this deployment's SECRET_KEY and "
            "FIELD_ENCRYPTION_SALTS: enter it again."
        )
    client = AttentiveClient(api_key=settings.key, base_url=settings.api_url)
    try:
        me = client.me()
    except AttentiveAuthError as exc:
        reason = exc.attentive_message or "no reason given"
        return messages.ERROR, f"Attentive refused the key ({exc.status}): {reason}. Check the key and its permissions."
    except AttentiveError as exc:
        return messages.ERROR, f"Could not verify the connection: {exc}"
    finally:
        client.session.close()
    company = me.get("companyName") or "(no company name)"
    application = me.get("applicationName") or "(no application name)"
    return messages.SUCCESS, f"Connected to Attentive at {settings.api_url}: company “{company}”, app “{application}”."


@admin.register(AttentiveSettings)
class AttentiveSettingsAdmin(admin.ModelAdmin):
    form = AttentiveSettingsForm
    fieldsets = (
        ("Connection", {"fields": ("new_api_key", "clear_api_key", "api_url", "sign_up_source_id")}),
        ("Sending", {"fields": ("enabled", "forwarded_event_types", "rate_limit_per_second", "max_event_age")}),
        ("Subscriptions and attributes", {"fields": ("auto_subscribe_on_enrollment", "push_loyalty_attributes")}),
        (None, {"fields": ("updated_at",)}),
    )
    readonly_fields = ("updated_at",)
    # What staff who may only view the settings see instead of the inputs.
    view_only_fieldsets = (
        ("Connection", {"fields": ("stored_api_key", "api_url", "sign_up_source_id")}),
        ("Sending", {"fields": ("enabled", "disabled_event_types", "rate_limit_per_second", "max_event_age")}),
        ("Subscriptions and attributes", {"fields": ("auto_subscribe_on_enrollment", "push_loyalty_attributes")}),
        (None, {"fields": ("updated_at",)}),
    )

    def get_fieldsets(self, request, obj=None):
        return self.fieldsets if self.has_change_permission(request, obj) else self.view_only_fieldsets

    @admin.display(description="API key")
    def stored_api_key(self, settings):
        return _stored_key(settings)

    # The one row is created on first visit and never deleted.
    def has_add_permission(self, request):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    def get_object(self, request, object_id, from_field=None):
        return self.model.load()  # a singleton: every id names the one row

    def get_urls(self):
        verify = path(
            "verify/",
            self.admin_site.admin_view(self.verify_view),
            name=f"{self.opts.app_label}_{self.opts.model_name}_verify",
        )
        return [verify, *super().get_urls()]

    def _change_url(self) -> str:
        return reverse(f"admin:{self.opts.app_label}_{self.opts.model_name}_change", args=[self.model.load().pk])

    def changelist_view(self, request, extra_context=None):
        if not self.has_view_or_change_permission(request):
            raise PermissionDenied
        return HttpResponseRedirect(self._change_url())

    def change_view(self, request, object_id, form_url="", extra_context=None):
        context = {**(extra_context or {}), "sending_blocker": self.model.load().sending_blocker()}
        return super().change_view(request, object_id, form_url, context)

    def response_post_save_change(self, request, obj):
        return HttpResponseRedirect(self._change_url())  # there is no list to go back to

    def save_model(self, request, obj, form, change):
        # The stored key is written only when it changed (why: see the module's docstring).
        if form.changes_api_key:
            obj.save()
        else:
            obj.save(update_fields=[f.name for f in obj._meta.concrete_fields if f.name not in ("id", "api_key")])

    def verify_view(self, request):
        if request.method != "POST":  # it calls Attentive: only on a deliberate, CSRF-checked click
            return HttpResponseNotAllowed(["POST"])
        if not self.has_change_permission(request):
            raise PermissionDenied
        level, text = verify_connection(self.model.load())
        self.message_user(request, text, level)
        return HttpResponseRedirect(self._change_url())


# --- deliveries --------------------------------------------------------------------------------


class EventTypeFilter(admin.SimpleListFilter):
    """The registered event types, plus "other": Django's default would list the column's
    DISTINCT values, a scan of the whole outbox on every page view."""

    title = "event type"
    parameter_name = "event_type"
    OTHER = "__other__"

    def lookups(self, request, model_admin):
        return [*event_types().items(), (self.OTHER, "other")]

    def queryset(self, request, queryset):
        if self.value() == self.OTHER:
            return queryset.exclude(event_type__in=event_types())
        if self.value():
            return queryset.filter(event_type=self.value())
        return queryset


class NewestAttemptsFormSet(BaseInlineFormSet):
    def get_queryset(self):
        # Sliced once and kept: the formset indexes into it once per form.
        if not hasattr(self, "_newest"):
            self._newest = super().get_queryset()[:ATTEMPTS_SHOWN]
        return self._newest


class DeliveryAttemptInline(admin.TabularInline):
    model = DeliveryAttempt
    formset = NewestAttemptsFormSet
    fields = readonly_fields = ("started_at", "status_code", "duration", "outcome", "error", "response_excerpt")
    extra = 0
    can_delete = False
    verbose_name_plural = f"attempts (newest {ATTEMPTS_SHOWN}, newest first)"

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    @admin.display(description="duration")
    def duration(self, attempt):
        return f"{attempt.duration_ms:.0f} ms"

    @admin.display(description="response")
    def response_excerpt(self, attempt):
        return Truncator(attempt.response_body).chars(RESPONSE_EXCERPT_CHARS)


@admin.register(Delivery)
class DeliveryAdmin(admin.ModelAdmin):
    list_display = (
        "external_event_id", "event_type", "status", "age", "attempts", "next_attempt_at", "last_error_excerpt",
        "created_at",
    )
    list_filter = ("status", EventTypeFilter)
    search_fields = ("external_event_id", "event_type", "last_error")
    search_help_text = "Part of an external event id, an event type or an error."
    list_per_page = 100
    # The changelist's extra COUNT(*) of the whole outbox grows with every event ever sent.
    show_full_result_count = False
    actions = ["retry_now", "replay"]
    inlines = [DeliveryAttemptInline]
    fields = readonly_fields = (
        "external_event_id", "event_type", "status", "occurred_at", "age", "created_at", "attempts",
        "next_attempt_at", "delivered_at", "last_error", "payload_json",
    )

    # The outbox is written by the delivery services only; these pages are its audit log.
    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    def has_resend_permission(self, request):
        # The actions send to Attentive, so they need the change permission that view-only
        # staff lack (no row is ever edited here).
        return request.user.has_perm(f"{self.opts.app_label}.{get_permission_codename('change', self.opts)}")

    @admin.display(description="age", ordering="-occurred_at")
    def age(self, delivery):
        return timesince(delivery.occurred_at)

    @admin.display(description="last error", ordering="last_error")
    def last_error_excerpt(self, delivery):
        return Truncator(delivery.last_error).chars(LIST_ERROR_CHARS)

    @admin.display(description="payload sent to Attentive")
    def payload_json(self, delivery):
        # format_html escapes the dump: a payload carries text from outside (names, offers).
        dumped = json.dumps(delivery.payload, indent=2, ensure_ascii=False)
        return format_html('<pre style="white-space: pre-wrap">{}</pre>', dumped)

    def changelist_view(self, request, extra_context=None):
        counts = dict(Delivery.objects.order_by().values_list("status").annotate(Count("pk")))
        status_counts = [(status.value, status.label, counts.get(status.value, 0)) for status in Delivery.Status]
        return super().changelist_view(request, {**(extra_context or {}), "status_counts": status_counts})

    def change_view(self, request, object_id, form_url="", extra_context=None):
        context = {**(extra_context or {}), "can_resend": self.has_resend_permission(request)}
        return super().change_view(request, object_id, form_url, context)

    def _selection_size(self, request, queryset) -> int | None:
        """How many deliveries are selected, or None (and an error shown) when over the cap."""
        count = queryset[: MAX_ACTION_ROWS + 1].count()  # bounded: a select-across is not counted in full
        if count > MAX_ACTION_ROWS:
            self.message_user(
                request,
                f"Select at most {MAX_ACTION_ROWS} deliveries at a time (each is locked and queued while you "
                "wait); narrow the list with the filters.",
                messages.ERROR,
            )
            return None
        return count

    def _warn_if_blocked(self, request) -> None:
        if blocker := AttentiveSettings.load().sending_blocker():
            self.message_user(request, f"They wait until sending can go ahead: {blocker}.", messages.WARNING)

    @admin.action(description="Retry now", permissions=["resend"])
    def retry_now(self, request, queryset):
        selected = self._selection_size(request, queryset)
        if selected is None:
            return None
        queued = delivery_services.retry_now(queryset)
        if queued:
            self.message_user(
                request, f"Queued an immediate try of {queued} {model_ngettext(queryset, queued)}.", messages.SUCCESS
            )
            self._warn_if_blocked(request)
        if left := selected - queued:
            self.message_user(
                request,
                f"Left {left} {model_ngettext(queryset, left)} alone: already delivered, dead or expired. "
                "Use “Replay” to send them again.",
                messages.WARNING,
            )
        return None

    @admin.action(description="Replay (send again, even if delivered)", permissions=["resend"])
    def replay(self, request, queryset):
        selected = self._selection_size(request, queryset)
        if selected is None:
            return None
        max_age = _hours(AttentiveSettings.load().max_event_age)
        if request.POST.get("confirmed") != "yes":
            delivered = queryset.filter(status=Delivery.Status.DELIVERED).count()
            return self._replay_confirmation(request, selected, delivered, max_age)
        replayed = delivery_services.replay(queryset)
        if replayed:
            self.message_user(
                request,
                f"Queued {replayed} {model_ngettext(queryset, replayed)} to be sent again under the same external "
                "event id.",
                messages.SUCCESS,
            )
            self._warn_if_blocked(request)
        if skipped := selected - replayed:
            self.message_user(
                request,
                f"Skipped {skipped} {model_ngettext(queryset, skipped)} older than the maximum event age "
                f"({max_age}): Attentive would not trigger journeys for them.",
                messages.WARNING,
            )
        return None

    def _replay_confirmation(self, request, selected: int, delivered: int, max_age: str) -> TemplateResponse:
        already = ""
        if delivered:
            was = "was" if delivered == 1 else "were"
            them = "it" if delivered == 1 else "them"
            already = format_html(
                "<strong>{} of them {} already delivered:</strong> Attentive receives {} a second time "
                "and may trigger journeys again. ",
                delivered,
                was,
                them,
            )
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": "Confirm: replay",
            "question": f"Replay {selected} {model_ngettext(self.model, selected)} to Attentive?",
            "detail": format_html(
                "Each is sent again under its same external event id. {}Deliveries older than the maximum "
                "event age ({}) are skipped.",
                already,
                max_age,
            ),
            "action": "replay",
            "checkbox_name": helpers.ACTION_CHECKBOX_NAME,
            "selected": request.POST.getlist(helpers.ACTION_CHECKBOX_NAME),
            "select_across": request.POST.get("select_across", "0"),
        }
        return TemplateResponse(request, "admin/action_confirmation.html", context)


# --- subscriptions and identity ---------------------------------------------------------------


class ReadOnlyRecordAdmin(admin.ModelAdmin):
    """What Attentive answered: written by the services only."""

    list_per_page = 100
    show_full_result_count = False

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(SubscriptionState)
class SubscriptionStateAdmin(ReadOnlyRecordAdmin):
    list_display = (
        "client_user_id", "channel", "subscription_type", "status", "attentive_status", "last_action", "updated_at",
        "note_excerpt",
    )
    list_filter = ("status", "channel", "subscription_type", "last_action")
    search_fields = ("client_user_id__exact", "address__exact")
    search_help_text = "An exact clientUserId, phone (E.164) or email."
    fields = readonly_fields = (
        "client_user_id", "channel", "subscription_type", "address", "status", "last_action", "attentive_status",
        "note", "updated_at", "response_json",
    )

    @admin.display(description="note", ordering="note")
    def note_excerpt(self, state):
        return Truncator(state.note).chars(LIST_ERROR_CHARS)

    @admin.display(description="Attentive's answer")
    def response_json(self, state):
        dumped = json.dumps(state.response, indent=2, ensure_ascii=False)
        return format_html('<pre style="white-space: pre-wrap">{}</pre>', dumped)


@admin.register(IdentityLink)
class IdentityLinkAdmin(ReadOnlyRecordAdmin):
    list_display = ("client_user_id", "pending", "linked_at", "attempted_at", "last_error_excerpt")
    list_filter = ("pending",)
    search_fields = ("client_user_id__exact",)
    search_help_text = "An exact clientUserId."
    fields = readonly_fields = (
        "client_user_id", "phone", "email", "pending", "requested_at", "linked_at", "attempted_at", "last_error",
    )

    @admin.display(description="last error", ordering="last_error")
    def last_error_excerpt(self, link):
        return Truncator(link.last_error).chars(LIST_ERROR_CHARS)


@admin.register(SegmentPush)
class SegmentPushAdmin(ReadOnlyRecordAdmin):
    """A push's batches, and Attentive's status of each batch's job, asked when the page opens."""

    list_display = ("__str__", "state", "total", "members_sent", "batches_sent", "requested_at", "finished_at")
    list_filter = ("state",)
    search_fields = ("segment_external_id__exact",)
    fields = readonly_fields = (
        "segment_external_id", "state", "criteria", "total", "batch_size", "batches_sent", "members_sent",
        "requested_at", "finished_at", "errors", "attentive_jobs",
    )
    actions = ["resume"]

    def has_resend_permission(self, request):
        # Resuming sends to Attentive: the change permission view-only staff lack.
        return request.user.has_perm(f"{self.opts.app_label}.{get_permission_codename('change', self.opts)}")

    @admin.action(description="Resume after the last accepted batch", permissions=["resend"])
    def resume(self, request, queryset):
        resumed = sum(segments.segment_push_resume(push=push) for push in queryset[:MAX_ACTION_ROWS])
        if resumed:
            self.message_user(request, f"Queued {resumed} segment pushes to resume.", messages.SUCCESS)
        else:
            self.message_user(request, "Nothing queued: those pushes were sent, or their job is still waiting or running.",
                              messages.WARNING)

    @admin.display(description="Attentive's bulk jobs")
    def attentive_jobs(self, push):
        if not push.job_ids:
            return "No batch sent yet."
        try:
            client = subscriptions_client()
        except NotConfigured as exc:
            return f"Attentive's job statuses cannot be read: {exc}."
        try:
            statuses = segments.job_statuses(push, client=client)
        finally:
            client.session.close()
        shown = len(statuses)
        rows = format_html_join(
            "", "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            ((s.get("bulkJobId", ""), s.get("status", ""), s.get("totalRecords", ""), s.get("error") or s.get("url", ""))
             for s in statuses),
        )
        note = format_html("<p>The newest {} of {} jobs.</p>", shown, len(push.job_ids)) if shown < len(push.job_ids) else ""
        return format_html(
            "{}<table><thead><tr><th>job id</th><th>status</th><th>records</th><th>result file or error</th></tr>"
            "</thead><tbody>{}</tbody></table>", note, rows,
        )


@admin.register(TextSend)
class TextSendAdmin(ReadOnlyRecordAdmin):
    """The texts sent from the portal, each once, with Attentive's answer."""

    list_display = ("requested_at", "to", "subscription_type", "state", "finished_at")
    list_filter = ("state", "subscription_type")
    search_fields = ("to__exact",)
    fields = readonly_fields = (
        "to", "subscription_type", "body", "state", "answer", "error", "requested_at", "finished_at", "idempotency_key",
    )

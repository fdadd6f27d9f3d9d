"""Segments on the member list: filters, a CSV for Attentive's subscriber upload, and a push into
an Attentive v2 segment.

* The filters (program, tier, points range, enrollment status, subscription state) only name
  their parameters; ``get_queryset`` applies them together through one selector
  (``selectors.segment_members``), so the enrollment conditions hold for one enrollment.
* "Export for Attentive (CSV)" and "Push to an Attentive segment…" act on the whole filtered list
  when nothing is ticked (``actions_without_selection``), on the ticked rows otherwise.
* The export streams: rows come from a server-side cursor a chunk at a time and are written as
  they are read, so a million members take the memory of one chunk. People open the file in a
  spreadsheet before uploading it, so its text cells are guarded against formulas; a phone in
  E.164 (only "+" and digits) cannot be one and is left as it is, for Attentive to read.
* The push records a ``SegmentPush`` and queues its job; its page shows the batches and
  Attentive's status of each batch's job.
* "Send a text…" on a member's page sends one text through ``POST /v1/text/send`` and shows
  Attentive's answer. Attentive only takes it from keys whose app has that permission, so the
  button and its page exist only with ``ATTENTIVE_TEXT_SEND_ENABLED``.
"""

from __future__ import annotations

import csv
import json
import uuid

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpResponseRedirect, StreamingHttpResponse
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html

from attentive_sync import segments
from attentive_sync.events import E164
from attentive_sync.spreadsheets import spreadsheet_safe
from sparkfly_sync import selectors
from sparkfly_sync.models import LoyaltyEnrollment, LoyaltyProgram
from sparkfly_sync.selectors import SUBSCRIPTION_FILTERS, SegmentCriteria

EXPORT_CHUNK_ROWS = 2000
# Points ranges offered as links; any "low-high" (either side may be empty) works in the URL.
POINTS_RANGES = (("0-0", "0"), ("1-99", "1–99"), ("100-499", "100–499"), ("500-999", "500–999"), ("1000-", "1,000 or more"))
TIERS_LISTED = 50


class _CriterionFilter(admin.SimpleListFilter):
    """Names a parameter and its choices; ``SegmentAdminMixin.get_queryset`` does the filtering."""

    def queryset(self, request, queryset):
        return None


class ProgramFilter(_CriterionFilter):
    title = "loyalty program"
    parameter_name = "program"

    def lookups(self, request, model_admin):
        return [(program.sparkfly_id, str(program)) for program in LoyaltyProgram.objects.order_by("name")]


class TierFilter(_CriterionFilter):
    title = "tier id"
    parameter_name = "tier"

    def lookups(self, request, model_admin):
        tiers = (
            LoyaltyEnrollment.objects.exclude(tier_id=None).order_by("tier_id").values_list("tier_id", flat=True).distinct()
        )
        return [(tier, str(tier)) for tier in tiers[:TIERS_LISTED]]


class PointsFilter(_CriterionFilter):
    title = "point balance"
    parameter_name = "points"

    def lookups(self, request, model_admin):
        return POINTS_RANGES


class EnrollmentStatusFilter(_CriterionFilter):
    title = "enrollment status"
    parameter_name = "enrollment_status"

    def lookups(self, request, model_admin):
        return LoyaltyEnrollment.Status.choices


class SubscriptionFilter(_CriterionFilter):
    title = "Attentive subscription"
    parameter_name = "subscription"

    def lookups(self, request, model_admin):
        return list(SUBSCRIPTION_FILTERS.items())


SEGMENT_FILTERS = (ProgramFilter, TierFilter, PointsFilter, EnrollmentStatusFilter, SubscriptionFilter)
SEGMENT_PARAMETERS = {f.parameter_name for f in SEGMENT_FILTERS} | {"o"}  # "o": the ordering, no filter
MAX_LISTED_MEMBERS = 100_000


def criteria_from(params) -> SegmentCriteria:
    """The criteria in a request's query; a value that is not a number where one is due is ignored."""

    def number(text: str | None) -> int | None:
        try:
            return int(text) if text not in (None, "") else None
        except ValueError:
            return None

    low, _, high = (params.get("points") or "").partition("-")
    subscription = params.get("subscription") or ""
    return SegmentCriteria(
        program=number(params.get("program")),
        tier=number(params.get("tier")),
        points_min=number(low),
        points_max=number(high),
        enrollment_status=params.get("enrollment_status") or "",
        subscription=subscription if subscription in SUBSCRIPTION_FILTERS else "",
    )


class _Echo:
    """A file whose ``write`` hands the line back, for csv.writer feeding a stream."""

    def write(self, value: str) -> str:
        return value


def _upload_cells(row: tuple) -> list:
    """A row of the upload as cells: the phone (first column) as it is when it is E.164 (the
    guard would quote its "+", and Attentive could not read it), guarded like the rest when not."""
    phone, *text = row
    return [phone if E164.match(phone) else spreadsheet_safe(phone), *map(spreadsheet_safe, text)]


def attentive_csv_response(queryset, *, filename: str) -> StreamingHttpResponse:
    writer = csv.writer(_Echo())
    rows = selectors.attentive_upload_rows(queryset, chunk_size=EXPORT_CHUNK_ROWS)
    lines = (writer.writerow(_upload_cells(row)) for row in rows)
    response = StreamingHttpResponse(lines, content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


class SegmentPushForm(forms.Form):
    # New on each page shown: a double submit (or the page sent again) records one push.
    idempotency_key = forms.UUIDField(widget=forms.HiddenInput)
    segment_external_id = forms.CharField(
        label="Segment externalId", max_length=255,
        help_text="The externalId of the Attentive segment to add the members to.",
    )
    create_with_name = forms.CharField(
        label="Create it first, named", max_length=240, required=False,
        help_text="Leave empty when the segment exists in Attentive already.",
    )


class TextSendForm(forms.Form):
    # New on each form shown: the same form sent twice (a double click, a refresh that posts
    # again) sends one text.
    idempotency_key = forms.UUIDField(widget=forms.HiddenInput)
    body = forms.CharField(label="Text", widget=forms.Textarea(attrs={"rows": 4, "cols": 60}), max_length=1600)
    subscription_type = forms.ChoiceField(
        label="Subscription type", choices=[("TRANSACTIONAL", "transactional"), ("MARKETING", "marketing")],
        help_text="Attentive sends it only to a phone subscribed for this type.",
    )


class SegmentAdminMixin:
    """Mixed into ``MemberAdmin``: the segment filters, the CSV export, the segment push and the
    one-off text."""

    segment_actions = ("export_attentive_csv", "push_attentive_segment")

    def __init__(self, model, admin_site):
        super().__init__(model, admin_site)
        self.actions = [*self.actions, *self.segment_actions]
        self.list_filter = (*self.list_filter, *SEGMENT_FILTERS)
        self.actions_without_selection = (*self.actions_without_selection, *self.segment_actions)

    def get_queryset(self, request):
        queryset = super().get_queryset(request)
        if request.resolver_match and request.resolver_match.url_name.endswith("_changelist"):
            queryset = selectors.segment_members(criteria_from(request.GET), queryset)
        return queryset

    @admin.action(description="Export for Attentive (CSV)", permissions=["manage"])  # contacts in bulk: not for viewers
    def export_attentive_csv(self, request, queryset):
        stamp = timezone.now().strftime("%Y%m%d-%H%M%S")
        return attentive_csv_response(queryset, filename=f"attentive-subscribers-{stamp}.csv")

    @admin.action(description="Push to an Attentive segment…", permissions=["manage"])
    def push_attentive_segment(self, request, queryset):
        from attentive_sync.subscriptions import NotConfigured, client_from_settings

        confirmed = request.POST.get("confirmed") == "yes"
        form = SegmentPushForm(request.POST if confirmed else None, initial={"idempotency_key": uuid.uuid4()})
        count = queryset.count()
        # The whole list narrowed only by the segment filters travels as criteria (a million
        # members stay a few bytes); ticked rows, a search or other filters as the members' keys.
        by_criteria = request.POST.get("select_across") == "1" and set(request.GET) <= SEGMENT_PARAMETERS
        if not by_criteria and count > MAX_LISTED_MEMBERS:
            self.message_user(
                request,
                f"Push at most {MAX_LISTED_MEMBERS:,} ticked or searched members at a time, or select the whole "
                "list narrowed by the loyalty and subscription filters only.",
                messages.ERROR,
            )
            return None
        if not form.is_valid():
            context = {
                **self.admin_site.each_context(request),
                "opts": self.opts,
                "title": "Push to an Attentive segment",
                "question": f"Add {count:,} members to an Attentive segment?",
                "detail": f"They are sent in batches of up to {segments.SEGMENT_MEMBERS_MAX:,} by a background job; "
                          "the push's page shows each batch and Attentive's status of it.",
                "form": form,
                "action": "push_attentive_segment",
                "checkbox_name": helpers.ACTION_CHECKBOX_NAME,
                "selected": request.POST.getlist(helpers.ACTION_CHECKBOX_NAME),
                "select_across": request.POST.get("select_across", "0"),
            }
            return TemplateResponse(request, "admin/sparkfly_sync/member/attentive_segment_push.html", context)
        if pushed := segments.segment_push_by_key(form.cleaned_data["idempotency_key"]):
            self.message_user(request, f"{pushed} was already queued by this form; it was not pushed again.", messages.INFO)
            return HttpResponseRedirect(reverse("admin:attentive_sync_segmentpush_change", args=[pushed.pk]))
        external_id = form.cleaned_data["segment_external_id"].strip()
        if name := form.cleaned_data["create_with_name"].strip():
            try:
                client = client_from_settings()
                try:
                    client.create_segment(name=name, external_id=external_id)
                finally:
                    client.session.close()
            except (NotConfigured, segments.AttentiveError) as exc:
                self.message_user(request, f"The segment was not created: {exc}", messages.ERROR)
                return None
        criteria = criteria_from(request.GET).as_dict()
        if not by_criteria:
            criteria = {"members": sorted(queryset.values_list("pk", flat=True))}
        push = segments.segment_push_create(
            segment_external_id=external_id, source="sparkfly_sync.selectors.segment_contacts",
            criteria=criteria, total=count, idempotency_key=form.cleaned_data["idempotency_key"],
        )
        self.message_user(request, f"{push} queued: {count:,} members.", messages.SUCCESS)
        return HttpResponseRedirect(reverse("admin:attentive_sync_segmentpush_change", args=[push.pk]))

    # --- a one-off text from the member page ----------------------------------------------------

    def get_fields(self, request, obj=None):
        fields = list(super().get_fields(request, obj))
        if obj is not None and self._may_text(request):
            fields.append("attentive_text")
        return fields

    def get_urls(self):
        info = self.opts.app_label, self.opts.model_name
        view = path(
            "<path:object_id>/attentive-text/", self.admin_site.admin_view(self.attentive_text_view),
            name="%s_%s_attentive_text" % info,
        )
        return [view, *super().get_urls()]

    def _may_text(self, request) -> bool:
        return settings.ATTENTIVE_TEXT_SEND_ENABLED and self.has_manage_permission(request)

    @admin.display(description="Text message")
    def attentive_text(self, member):
        if not member.phone:
            return "No phone number to text."
        url = reverse(f"admin:{self.opts.app_label}_{self.opts.model_name}_attentive_text", args=[member.pk])
        return format_html('<a class="button" href="{}">Send a text…</a>', url)

    def attentive_text_view(self, request, object_id):
        """The form (GET); a valid POST sends (once per form key) and redirects to this page
        showing that text's result, so a refresh shows it again rather than sending again."""
        from attentive_sync.errors import AttentiveError
        from attentive_sync.subscriptions import NotConfigured, client_from_settings
        from attentive_sync.texts import TextSend, text_send

        if not settings.ATTENTIVE_TEXT_SEND_ENABLED:
            raise Http404("Sending texts is not enabled for this Attentive key (ATTENTIVE_TEXT_SEND_ENABLED).")
        if not self.has_manage_permission(request):
            raise PermissionDenied
        member = self.get_object(request, unquote(object_id))
        if member is None:
            return self._get_obj_does_not_exist_redirect(request, self.opts, object_id)
        fresh = {"idempotency_key": uuid.uuid4()}
        form = TextSendForm(request.POST if request.method == "POST" else None, initial=fresh)
        error = None
        if not member.phone:
            error = "This member has no phone number to text."
        elif form.is_valid():
            try:
                client = client_from_settings()
                try:
                    record, _ = text_send(
                        idempotency_key=form.cleaned_data["idempotency_key"], to=member.phone,
                        body=form.cleaned_data["body"], subscription_type=form.cleaned_data["subscription_type"],
                        client=client,
                    )
                finally:
                    client.session.close()
            except (NotConfigured, AttentiveError) as exc:
                error = f"Not sent: {exc}"
            else:
                return HttpResponseRedirect(f"{request.path}?sent={record.pk}")
        sent = None
        if request.method == "GET" and (sent_id := request.GET.get("sent", "")).isdigit():
            sent = TextSend.objects.filter(pk=int(sent_id), to=member.phone).first()
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": f"Send a text to {member}",
            "member": member,
            "form": form,
            "sent": sent,
            "answer": json.dumps(sent.answer, indent=2, ensure_ascii=False) if sent and sent.state == sent.State.SENT else None,
            "error": error or _sent_problem(sent),
        }
        return TemplateResponse(request, "admin/sparkfly_sync/member/attentive_text_send.html", context)


def _sent_problem(sent) -> str | None:
    if sent is None or sent.state == sent.State.SENT:
        return None
    if sent.state == sent.State.FAILED:
        return f"Not sent: {sent.error}"
    return "Attentive has not answered for this text (or the process sending it stopped); it is not sent again."

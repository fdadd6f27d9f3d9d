"""Admin of credential issuance (``sparkfly_sync.issuance``).

* ``IssuanceAdminMixin`` adds to the member admin: an "Issue a credential" button on a member's
  page, leading to a form (channel, offers) that issues while the person waits and shows the
  code, or the refusal in Sparkfly's words; and the action "Issue credentials…" on selected
  members, which queues a background batch and shows its progress.
* Issuance batches and requests get read-only pages: a batch's progress and each member's
  result; the request log, searchable by member, credential, code or idempotency key.

Every form carries a hidden idempotency key made when it is rendered, so submitting it twice
(a double click, a reload) issues once and shows the first result. Issuing needs the
"Can issue credentials through Sparkfly" permission.
"""

from __future__ import annotations

import uuid

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.admin.options import IS_POPUP_VAR
from django.contrib.admin.utils import unquote
from django.core.exceptions import ImproperlyConfigured, PermissionDenied
from django.db.models import Q
from django.http import HttpResponseRedirect
from django.template.loader import select_template
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join
from django.utils.text import Truncator

from sparkfly_sync import issuance
from sparkfly_sync.client import client_from_settings
from sparkfly_sync.models import Channel, IssuanceBatch, IssuanceRequest, Member, Offer
from sparkfly_sync.serializers import MAX_SPARKFLY_ID

ISSUE_PERMISSION = "sparkfly_sync.issue_credentials"
# Past this, the command (``manage.py issue_credentials --members …``) is the better tool, and
# one batch row stays a reasonable size.
MAX_BATCH_MEMBERS = 100_000
# How many members' results a batch page lists (the request list has them all).
RESULTS_SHOWN = 200
REASON_CHARS = 120
TEMPLATES = "admin/sparkfly_sync/issuance"


class IssueCredentialForm(forms.Form):
    channel = forms.ModelChoiceField(
        queryset=Channel.objects.order_by("name", "sparkfly_id"), to_field_name="sparkfly_id",
        help_text="The channel the credential is issued on.",
    )
    offers = forms.ModelMultipleChoiceField(
        queryset=Offer.objects.order_by("name", "sparkfly_id"), to_field_name="sparkfly_id",
        widget=forms.SelectMultiple(attrs={"size": 12}),
        help_text="One or more offers published on that channel. Hold Ctrl (⌘ on a Mac) to select several.",
    )
    # Made when the form is rendered: a second submission of the same page is the same request.
    idempotency_key = forms.UUIDField(widget=forms.HiddenInput)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["channel"].label_from_instance = lambda channel: f"{channel} (#{channel.sparkfly_id})"
        self.fields["offers"].label_from_instance = _offer_label

    @classmethod
    def fresh(cls, data=None) -> IssueCredentialForm:
        """A form with a new idempotency key: bound to ``data`` (keeping the person's choices,
        and its errors once validated), or unbound."""
        if data is None:
            return cls(initial={"idempotency_key": uuid.uuid4()})
        data = data.copy()
        data["idempotency_key"] = str(uuid.uuid4())
        return cls(data)


def _offer_label(offer: Offer) -> str:
    until = f", until {offer.expires_at:%Y-%m-%d}" if offer.expires_at else ""
    return f"{offer} (#{offer.sparkfly_id}, {offer.status or 'no status'}{until})"


class IssuanceAdminMixin:
    """The member admin's issuance: a per-member form and a bulk action.

    The member's change page gets its button through ``change_form_template``, which extends
    the template the rest of the admin's classes would have used (another mixin's, or Django's
    per-model lookup), so a mixin placed after this one in the bases keeps its own additions.
    """

    change_form_template = f"{TEMPLATES}/member_change_form.html"

    def has_issue_permission(self, request) -> bool:
        return request.user.has_perm(ISSUE_PERMISSION)

    def get_urls(self):
        opts = self.opts
        return [
            path(
                "<path:object_id>/issue-credential/",
                self.admin_site.admin_view(self.issue_credential_view),
                name=f"{opts.app_label}_{opts.model_name}_issue_credential",
            ),
            *super().get_urls(),
        ]

    def get_actions(self, request):
        actions = super().get_actions(request)
        if self.actions is not None and IS_POPUP_VAR not in request.GET and self.has_issue_permission(request):
            actions["issue_credentials"] = (IssuanceAdminMixin.issue_credentials, "issue_credentials", "Issue credentials…")
        return actions

    def change_view(self, request, object_id, form_url="", extra_context=None):
        context = {"issuance_parent_template": self._parent_change_form_template()}
        if self.has_issue_permission(request):
            opts = self.opts
            context["issue_credential_url"] = reverse(
                f"admin:{opts.app_label}_{opts.model_name}_issue_credential", args=[object_id]
            )
        return super().change_view(request, object_id, form_url, {**context, **(extra_context or {})})

    def _parent_change_form_template(self) -> str:
        inherited = super().change_form_template
        opts = self.opts
        candidates = [inherited] if inherited else [
            f"admin/{opts.app_label}/{opts.model_name}/change_form.html",
            f"admin/{opts.app_label}/change_form.html",
            "admin/change_form.html",
        ]
        return select_template(candidates).template.name

    # --- one member, while the person waits -------------------------------------------------------

    def issue_credential_view(self, request, object_id):
        member = self.get_object(request, unquote(object_id))
        if member is None:
            return self._get_obj_does_not_exist_redirect(request, self.opts, object_id)
        if not (self.has_view_permission(request, member) and self.has_issue_permission(request)):
            raise PermissionDenied
        result = retry = None
        if request.method != "POST":
            form = IssueCredentialForm.fresh()
        else:
            form = IssueCredentialForm(request.POST)
            if form.is_valid():
                result, form = self._issue_for(request, member, form)
                if result is not None and result.state == IssuanceRequest.State.FAILED:
                    retry = {
                        "idempotency_key": result.idempotency_key,
                        "channel": result.channel_id,
                        "offers": result.offer_ids,
                    }
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": f"Issue a credential to {member}",
            "member": member,
            "member_url": reverse(f"admin:{self.opts.app_label}_{self.opts.model_name}_change", args=[member.pk]),
            "form": form,
            "result": result,
            "result_url": _admin_url(result) if result is not None else None,
            "retry": retry,
        }
        return TemplateResponse(request, f"{TEMPLATES}/issue_form.html", context)

    def _issue_for(self, request, member, form):
        """Issue from a valid form; returns the request (None when nothing was sent) and the
        form to show next: unchanged while the same key should be submitted again, otherwise
        with a new key, the choices kept and any refusal or error on it."""
        data = form.cleaned_data
        try:
            client = client_from_settings(interactive=True)
            result = issuance.issue_credential(
                member_id=member.sparkfly_id,
                channel_id=data["channel"].sparkfly_id,
                offer_ids=[offer.sparkfly_id for offer in data["offers"]],
                idempotency_key=data["idempotency_key"],
                client=client,
                requested_by=request.user,
            )
        except ImproperlyConfigured as exc:
            form.add_error(None, str(exc))  # the same key may be submitted once it is configured
            return None, form
        except issuance.IdempotencyKeyReused as exc:
            next_form = IssueCredentialForm.fresh(request.POST)
            next_form.is_valid()
            next_form.add_error(None, str(exc))
            return None, next_form
        if result.state == IssuanceRequest.State.PENDING:
            return result, form  # submitting the same key again shows its result once settled
        if result.state == IssuanceRequest.State.ISSUED:
            return result, IssueCredentialForm.fresh()
        next_form = IssueCredentialForm.fresh(request.POST)
        next_form.is_valid()
        next_form.add_error(None, result.reason)
        return result, next_form

    # --- many members: a background batch -----------------------------------------------------

    def issue_credentials(self, request, queryset):
        """The action: a form for the channel and offers, posted back with the selection; then
        one batch, issued by a worker, whose page shows its progress."""
        selected = queryset[: MAX_BATCH_MEMBERS + 1].count()
        if selected > MAX_BATCH_MEMBERS:
            self.message_user(
                request,
                f"Select at most {MAX_BATCH_MEMBERS} members at a time, or use "
                "`manage.py issue_credentials --members …` for more.",
                messages.ERROR,
            )
            return None
        form = IssueCredentialForm.fresh()
        if "issue" in request.POST:
            form = IssueCredentialForm(request.POST)
            if form.is_valid():
                return self._queue_batch(request, queryset, form.cleaned_data)
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": "Issue credentials to the selected members",
            "form": form,
            "selected_count": selected,
            "action": "issue_credentials",
            "checkbox_name": helpers.ACTION_CHECKBOX_NAME,
            "selected": request.POST.getlist(helpers.ACTION_CHECKBOX_NAME),
            "select_across": request.POST.get("select_across", "0"),
        }
        return TemplateResponse(request, f"{TEMPLATES}/bulk_form.html", context)

    def _queue_batch(self, request, queryset, data):
        try:
            batch, created = issuance.issuance_batch_create(
                member_ids=queryset.order_by("sparkfly_id").values_list("sparkfly_id", flat=True),
                channel_id=data["channel"].sparkfly_id,
                offer_ids=[offer.sparkfly_id for offer in data["offers"]],
                idempotency_key=data["idempotency_key"],
                requested_by=request.user,
            )
        except issuance.IdempotencyKeyReused as exc:
            self.message_user(request, str(exc), messages.ERROR)
            return None
        if created:
            self.message_user(
                request, f"Queued the issuance to {batch.total} members. Its progress shows below.", messages.SUCCESS
            )
        else:
            self.message_user(request, "This issuance was already queued (the form was sent twice); here it is.")
        return HttpResponseRedirect(_admin_url(batch))


# --- the batches and the requests ----------------------------------------------------------------------


def _admin_url(obj) -> str:
    opts = obj._meta
    return reverse(f"admin:{opts.app_label}_{opts.model_name}_change", args=[obj.pk])


def _member_link(request_row: IssuanceRequest) -> str:
    """The member's page, or its bare Sparkfly id while it is not mirrored (the relation is
    read from the select_related cache: no query per row)."""
    try:
        member = request_row.member
    except Member.DoesNotExist:
        member = None
    if member is None:
        return str(request_row.member_id)
    return format_html('<a href="{}">{} (#{})</a>', _admin_url(member), member, member.sparkfly_id)


class IssuanceReadOnlyAdmin(admin.ModelAdmin):
    """Issuance is recorded by the service only: nothing is added, changed or deleted here."""

    list_per_page = 100
    show_full_result_count = False

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    def has_issue_permission(self, request) -> bool:
        return request.user.has_perm(ISSUE_PERMISSION)


@admin.register(IssuanceBatch)
class IssuanceBatchAdmin(IssuanceReadOnlyAdmin):
    list_display = ("created_at", "state", "progress", "issued", "refused", "failed", "channel_id", "offers",
                    "requested_by", "finished_at")
    list_filter = ("state",)
    list_select_related = ("requested_by",)
    fields = readonly_fields = (
        "state", "progress", "issued", "refused", "failed", "failure", "channel_id", "offers", "requested_by",
        "created_at", "started_at", "finished_at", "idempotency_key", "results",
    )
    actions = ["retry"]
    # Reloads itself while the batch is queued or running.
    change_form_template = f"{TEMPLATES}/batch_change_form.html"

    @admin.display(description="progress")
    def progress(self, batch):
        return f"{batch.settled} of {batch.total} members"

    @admin.display(description="offers")
    def offers(self, batch):
        return ", ".join(map(str, batch.offer_ids))

    @admin.display(description=f"results (first {RESULTS_SHOWN})")
    def results(self, batch):
        rows = batch.requests.select_related("member").order_by("pk")[:RESULTS_SHOWN]
        body = format_html_join(
            "",
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            ((_member_link(r), format_html('<a href="{}">{}</a>', _admin_url(r), r.state), r.code, r.reason)
             for r in rows),
        )
        every_one = reverse("admin:sparkfly_sync_issuancerequest_changelist") + f"?batch__id__exact={batch.pk}"
        if not body:
            return "No member settled yet."
        return format_html(
            "<table><thead><tr><th>member</th><th>result</th><th>code</th><th>reason</th></tr></thead>"
            '<tbody>{}</tbody></table><p><a href="{}">Every member\'s result</a></p>',
            body, every_one,
        )

    @admin.action(description="Retry failed members and those not reached", permissions=["issue"])
    def retry(self, request, queryset):
        queued = sum(issuance.issuance_batch_retry(batch=batch) for batch in queryset[:100])
        if queued:
            self.message_user(request, f"Queued {queued} batches again.", messages.SUCCESS)
        else:
            self.message_user(request, "Nothing queued: those batches are still queued or running.", messages.WARNING)


@admin.register(IssuanceRequest)
class IssuanceRequestAdmin(IssuanceReadOnlyAdmin):
    list_display = ("created_at", "member_column", "channel_id", "offers", "state", "code", "reason_excerpt",
                    "batch_column", "requested_by")
    list_filter = ("state", "events")
    list_select_related = ("requested_by", "member")
    search_fields = ("code__exact",)  # and ids and keys: see get_search_results
    search_help_text = "An exact code, Sparkfly member or credential id, or idempotency key."
    fields = readonly_fields = (
        "state", "member_column", "channel_id", "offers", "code", "credential_id", "events", "reason", "attempts",
        "awaiting_creation", "batch_column", "requested_by", "created_at", "finished_at", "idempotency_key",
    )

    def get_search_results(self, request, queryset, search_term):
        term = search_term.strip()
        if not term:
            return queryset, False
        if term.isascii() and term.isdigit() and int(term) <= MAX_SPARKFLY_ID:  # codes can be digits too
            return queryset.filter(Q(member_id=int(term)) | Q(credential_id=int(term)) | Q(code=term)), False
        try:
            return queryset.filter(idempotency_key=uuid.UUID(term)), False
        except ValueError:
            return queryset.filter(code=term), False

    @admin.display(description="member", ordering="member_id")
    def member_column(self, request_row):
        return _member_link(request_row)

    @admin.display(description="offers")
    def offers(self, request_row):
        return ", ".join(map(str, request_row.offer_ids))

    @admin.display(description="reason", ordering="reason")
    def reason_excerpt(self, request_row):
        return Truncator(request_row.reason).chars(REASON_CHARS)

    @admin.display(description="batch", ordering="batch_id")
    def batch_column(self, request_row):
        if request_row.batch_id is None:
            return "—"
        url = reverse("admin:sparkfly_sync_issuancebatch_change", args=[request_row.batch_id])
        return format_html('<a href="{}">batch {}</a>', url, request_row.batch_id)

"""Attentive on the member pages: subscribe, check eligibility, unsubscribe, link the identity.

* Actions on selected members ask first (unsubscribe with the channels to choose: text, email
  or both). Up to ``INLINE_MEMBERS`` run while the admin waits, each member one or two
  Attentive requests on a 10-a-second budget; more are queued as jobs, whose results appear on
  each member's page (1,000 subscribes take a few minutes at Attentive's rate).
* A member's page shows what Attentive last answered per channel and type, and the identity
  link, with buttons doing the same for this member. The buttons sit in that read-only panel
  and submit the page's own form (its CSRF token) to this mixin's URL through ``formaction``,
  so no template of the member page is overridden.
* Like every action that writes elsewhere, they need the change permission on members
  (``PortalActionsMixin.has_manage_permission``, which the admin this is mixed into provides).
"""

from __future__ import annotations

import json

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.admin.utils import model_ngettext, unquote
from django.core.exceptions import PermissionDenied
from django.http import HttpResponseNotAllowed, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import formats, timezone
from django.utils.html import format_html, format_html_join

from attentive_sync import identity, subscriptions
from attentive_sync.models import AttentiveSettings
from attentive_sync.subscriptions import CHANNELS, EMAIL, TEXT, ContactRefused, NotConfigured
from sparkfly_sync import attentive_members
from sparkfly_sync.attentive_members import ELIGIBILITY, LINK_IDENTITY, SUBSCRIBE, UNSUBSCRIBE

# Run while the admin waits: ten members are at most twenty requests, two seconds at 10/s.
INLINE_MEMBERS = 10
# Queued per action; a larger selection is narrowed with the filters first.
MAX_QUEUED_MEMBERS = 10_000
# Requests per member and Attentive's rate per action, for "this takes about …".
REQUESTS_PER_SECOND = {SUBSCRIBE: 4.5, ELIGIBILITY: 9, UNSUBSCRIBE: 4.5, LINK_IDENTITY: 9}

QUESTIONS = {
    SUBSCRIBE: (
        "Subscribe {count} {noun} in Attentive?",
        "Each is subscribed by phone and email through the sign-up source in the Attentive settings, with their "
        "Sparkfly identifier as clientUserId; Attentive texts a new phone subscriber to confirm. Attentive is asked "
        "first, and a channel on which someone is already subscribed is left alone (subscribing again would text "
        "them again). Someone who unsubscribed is subscribed again.",
    ),
    ELIGIBILITY: (
        "Check the Attentive subscriptions of {count} {noun}?",
        "Attentive is asked which subscriptions each has and whether each can be messaged; nothing is changed.",
    ),
    LINK_IDENTITY: (
        "Link {count} {noun} to their phone and email in Attentive?",
        "Attentive's Identity API ties each Sparkfly identifier (clientUserId) to the member's phone and email, so "
        "events naming only the identifier reach the subscriber. Contacts already linked are not sent again.",
    ),
}


class UnsubscribeForm(forms.Form):
    channels = forms.MultipleChoiceField(
        label="Unsubscribe from",
        choices=[(TEXT, "Text messages (by phone)"), (EMAIL, "Email")],
        initial=list(CHANNELS),
        widget=forms.CheckboxSelectMultiple,
        error_messages={"required": "Choose text, email or both."},
        help_text="Every subscription type on the chosen channels. For text, Attentive texts a confirmation.",
    )


class AttentiveMemberAdminMixin:
    """Mixed into ``MemberAdmin`` before its base: the actions, the panel and its URL."""

    attentive_actions = ("attentive_subscribe", "attentive_check_eligibility", "attentive_unsubscribe",
                         "attentive_link_identity")

    def __init__(self, model, admin_site):
        super().__init__(model, admin_site)
        self.actions = [*self.actions, *self.attentive_actions]

    # --- the member page --------------------------------------------------------------------

    def get_fields(self, request, obj=None):
        fields = list(super().get_fields(request, obj))
        if obj is not None:
            panel = "attentive_panel" if self.has_manage_permission(request) else "attentive_state"
            at = fields.index("raw_payload") if "raw_payload" in fields else len(fields)
            fields.insert(at, panel)
        return fields

    def get_urls(self):
        info = self.opts.app_label, self.opts.model_name
        view = path(
            "<path:object_id>/attentive/",
            self.admin_site.admin_view(self.attentive_view),
            name="%s_%s_attentive" % info,
        )
        return [view, *super().get_urls()]

    @admin.display(description="Attentive")
    def attentive_panel(self, member):
        return self._attentive_block(member, buttons=True)

    @admin.display(description="Attentive")
    def attentive_state(self, member):
        return self._attentive_block(member, buttons=False)

    def _attentive_block(self, member, *, buttons: bool) -> str:
        states = subscriptions.states_of(member.identifier) if member.identifier else []
        rows = (
            (
                state.channel, state.subscription_type or "(any)", state.get_status_display(),
                state.attentive_status, state.address, state.get_last_action_display(), _when(state.updated_at),
                state.note, _answer(state.response),
            )
            for state in states
        )
        head = format_html_join("", "<th>{}</th>", ((h,) for h in (
            "channel", "type", "status", "Attentive's word", "phone or email", "last action", "when", "note",
            "Attentive's answer",
        )))
        body = format_html_join(
            "", "<tr>{}</tr>", ((format_html_join("", "<td>{}</td>", ((cell,) for cell in row)),) for row in rows)
        )
        table = (
            format_html("<table><thead><tr>{}</tr></thead><tbody>{}</tbody></table>", head, body)
            if body else format_html("<p>{}</p>", "Nothing asked of Attentive yet.")
        )
        return format_html(
            "<div><p><strong>Identity link:</strong> {}</p>{}{}</div>",
            _identity_state(member), table, self._buttons(member) if buttons else "",
        )

    def _buttons(self, member) -> str:
        url = reverse(f"admin:{self.opts.app_label}_{self.opts.model_name}_attentive", args=[member.pk])
        choices = (
            (SUBSCRIBE, "Subscribe in Attentive"), (ELIGIBILITY, "Check Attentive eligibility"),
            (UNSUBSCRIBE, "Unsubscribe from Attentive…"), (LINK_IDENTITY, "Link identity in Attentive"),
        )
        # Buttons of the page's own form, sent to this mixin's URL (no form nested in a form).
        return format_html(
            '<p class="submit-row" style="display:flex;gap:0.5em;flex-wrap:wrap">{}</p>',
            format_html_join(
                "",
                '<button type="submit" class="button" formaction="{}" formmethod="post" name="attentive" '
                'value="{}">{}</button>',
                ((url, value, label) for value, label in choices),
            ),
        )

    def attentive_view(self, request, object_id):
        if request.method != "POST":  # it calls Attentive: only on a deliberate, CSRF-checked click
            return HttpResponseNotAllowed(["POST"])
        if not self.has_manage_permission(request):
            raise PermissionDenied
        member = self.get_object(request, unquote(object_id))
        if member is None:
            return self._get_obj_does_not_exist_redirect(request, self.opts, object_id)
        action = request.POST.get("attentive")
        if action not in attentive_members.ACTIONS:
            self.message_user(request, "Unknown Attentive action.", messages.ERROR)
        else:
            channels = list(CHANNELS)
            if action == UNSUBSCRIBE:
                form = UnsubscribeForm(request.POST if request.POST.get("confirmed") == "yes" else None)
                if not form.is_valid():
                    return self._unsubscribe_page(request, form, member=member)
                channels = form.cleaned_data["channels"]
            self._run_now(request, action, [member], channels)
        return HttpResponseRedirect(reverse(f"admin:{self.opts.app_label}_{self.opts.model_name}_change", args=[member.pk]))

    # --- the actions --------------------------------------------------------------------------

    @admin.action(description="Subscribe in Attentive", permissions=["manage"])
    def attentive_subscribe(self, request, queryset):
        return self._attentive_action(request, queryset, SUBSCRIBE, "attentive_subscribe")

    @admin.action(description="Check Attentive eligibility", permissions=["manage"])
    def attentive_check_eligibility(self, request, queryset):
        return self._attentive_action(request, queryset, ELIGIBILITY, "attentive_check_eligibility")

    @admin.action(description="Unsubscribe from Attentive…", permissions=["manage"])
    def attentive_unsubscribe(self, request, queryset):
        return self._attentive_action(request, queryset, UNSUBSCRIBE, "attentive_unsubscribe")

    @admin.action(description="Link identity in Attentive", permissions=["manage"])
    def attentive_link_identity(self, request, queryset):
        return self._attentive_action(request, queryset, LINK_IDENTITY, "attentive_link_identity")

    def _attentive_action(self, request, queryset, action: str, name: str):
        count = queryset[: MAX_QUEUED_MEMBERS + 1].count()  # bounded: a select-across is not counted in full
        if count > MAX_QUEUED_MEMBERS:
            self.message_user(
                request,
                f"Select at most {MAX_QUEUED_MEMBERS:,} members at a time; narrow the list with the filters.",
                messages.ERROR,
            )
            return None
        noun = model_ngettext(queryset, count)
        confirmed = request.POST.get("confirmed") == "yes"
        channels = list(CHANNELS)
        if action == UNSUBSCRIBE:
            form = UnsubscribeForm(request.POST if confirmed else None)
            if not form.is_valid():
                return self._unsubscribe_page(request, form, action=name, count=count)
            channels = form.cleaned_data["channels"]
        elif not confirmed:
            question, detail = QUESTIONS[action]
            if count > INLINE_MEMBERS:
                detail += f" They are queued as jobs ({_duration(count, action)} at Attentive's rate)."
            return self._confirmation(request, action=name, question=question.format(count=count, noun=noun), detail=detail)
        if count <= INLINE_MEMBERS:
            self._run_now(request, action, list(queryset), channels)
        else:
            self._queue(request, action, queryset, channels, count)
        return None

    def _run_now(self, request, action: str, members, channels) -> None:
        try:
            client = _client_for(action)
        except NotConfigured as exc:
            self.message_user(request, f"Nothing was sent to Attentive: {exc}.", messages.ERROR)
            return
        try:
            outcomes = attentive_members.act(action, members, client=client, channels=channels)
        except NotConfigured as exc:
            self.message_user(request, f"Nothing was sent to Attentive: {exc}.", messages.ERROR)
            return
        finally:
            client.session.close()
        for outcome in outcomes:
            level = messages.ERROR if outcome.error else messages.WARNING if outcome.refused else messages.SUCCESS
            self.message_user(request, str(outcome), level)

    def _queue(self, request, action: str, queryset, channels, count: int) -> None:
        try:
            _client_for(action).session.close()  # the jobs would only log it: say it now
        except NotConfigured as exc:
            self.message_user(request, f"Nothing was queued: {exc}.", messages.ERROR)
            return
        queued, refused = attentive_members.queue(action, queryset.iterator(chunk_size=2000), channels=channels)
        if queued:
            self.message_user(
                request,
                f"Queued {queued} {model_ngettext(queryset, queued)} for Attentive ({_duration(queued, action)} at "
                "Attentive's rate); each member's page shows the results as they come.",
                messages.SUCCESS,
            )
        if refused:
            shown = "; ".join(refused[:5]) + (f"; and {len(refused) - 5} more" if len(refused) > 5 else "")
            self.message_user(request, f"Left out {len(refused)}: {shown}.", messages.WARNING)

    def _unsubscribe_page(self, request, form, *, member=None, action: str = "", count: int = 1) -> TemplateResponse:
        who = f"member {member}" if member is not None else f"{count} {model_ngettext(self.model, count)}"
        detail = "Attentive stops messaging them on the chosen channels."
        if member is None and count > INLINE_MEMBERS:
            detail += f" They are queued as jobs ({_duration(count, UNSUBSCRIBE)} at Attentive's rate)."
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": "Confirm: unsubscribe from Attentive",
            "question": f"Unsubscribe {who} from Attentive?",
            "detail": detail,
            "form": form,
            "member": member,
            "action": action,
            "checkbox_name": helpers.ACTION_CHECKBOX_NAME,
            "selected": request.POST.getlist(helpers.ACTION_CHECKBOX_NAME),
            "select_across": request.POST.get("select_across", "0"),
        }
        return TemplateResponse(request, "admin/sparkfly_sync/member/attentive_unsubscribe.html", context)


def _client_for(action: str):
    """A client for a person's click; a subscribe also needs the sign-up source."""
    client = subscriptions.client_from_settings()
    if action == SUBSCRIBE and not AttentiveSettings.load().sign_up_source_id.strip():
        client.session.close()
        raise NotConfigured("no sign-up source id is set in the Attentive settings: Attentive needs one to subscribe")
    return client


def _duration(count: int, action: str) -> str:
    seconds = count / REQUESTS_PER_SECOND[action]
    return f"about {seconds:.0f} seconds" if seconds < 120 else f"about {seconds / 60:.0f} minutes"


def _when(moment) -> str:
    return formats.localize(timezone.localtime(moment)) if moment else ""


def _answer(response) -> str:
    if not response:
        return ""
    dumped = json.dumps(response, indent=2, sort_keys=True, ensure_ascii=False)
    return format_html('<details><summary>show</summary><pre style="white-space: pre-wrap">{}</pre></details>', dumped)


def _identity_state(member) -> str:
    try:
        contact = attentive_members.contact_for(member)
    except ContactRefused as exc:
        return f"not possible: {exc}"
    link = identity.link_of(contact.client_user_id)
    if link is None:
        return "not linked yet."
    if link.linked_at and link.contacts_digest == identity.contacts_digest(contact):
        state = f"linked with the phone and email shown above ({_when(link.linked_at)})."
    elif link.pending and link.linked_at:
        state = f"contacts changed since they were linked ({_when(link.linked_at)}): re-link pending."
    elif link.pending:
        state = f"link pending (requested {_when(link.requested_at)})."
    elif link.linked_at:
        state = f"linked with earlier contacts ({_when(link.linked_at)}), not with the ones shown above."
    else:
        state = "not linked."
    if link.last_error:
        state += f" Last error ({_when(link.attempted_at)}): {link.last_error}"
    return state

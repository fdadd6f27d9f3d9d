"""The deliveries page: the Attentive outbox, failures and dead letters first, with Attentive's
error text; administrators retry or replay a delivery from it.

Retry and replay are POSTs (CSRF-checked) calling the delivery services the admin actions use,
then redirect back to the list with its filters (POST/redirect/GET). They need
``attentive_sync.change_delivery``: program managers see no buttons and are refused (403).
"""

from __future__ import annotations

from django import forms
from django.contrib import messages
from django.http import HttpResponseRedirect, QueryDict
from django.urls import reverse
from django.utils import timezone
from django.views.generic import TemplateView, View

from attentive_sync import delivery as delivery_services
from attentive_sync.models import AttentiveSettings, Delivery
from attentive_sync.registry import event_types
from portal.pages.access import PortalPage
from portal.pages.dates import PortalDateField
from portal.selectors.deliveries import PROBLEM_STATUSES, DeliveryFilters, delivery_page

PER_PAGE = 50
MAX_PAGE = 10_000  # half a million rows deep: further, narrowing the filters is the way
PROBLEMS = "problems"
ALL = "all"
FILTER_FIELDS = ("status", "event_type", "created_from", "created_to", "q")


class DeliveryFilterForm(forms.Form):
    status = forms.ChoiceField(required=False, initial=PROBLEMS)
    event_type = forms.ChoiceField(label="Event type", required=False)
    created_from = PortalDateField(label="Created from", required=False)
    created_to = PortalDateField(label="Created to", required=False)
    q = forms.CharField(label="External event id", required=False, max_length=255)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["status"].choices = [
            (PROBLEMS, "Needs attention (failed, dead, expired)"),
            (ALL, "Every status"),
            *Delivery.Status.choices,
        ]
        self.fields["event_type"].choices = [("", "Every event type"), *event_types().items()]

    def clean(self):
        cleaned = super().clean()
        start, end = cleaned.get("created_from"), cleaned.get("created_to")
        if start and end and start > end:
            self.add_error("created_to", "The end date is before the start date.")
        return cleaned

    def filters(self) -> DeliveryFilters:
        """The valid filters; an invalid one is left out (its error is shown on the page)."""
        if not self.is_bound:
            return DeliveryFilters()
        self.is_valid()
        data = {name: value for name, value in self.cleaned_data.items() if name not in self.errors}
        status = data.get("status") or PROBLEMS
        statuses = PROBLEM_STATUSES if status == PROBLEMS else () if status == ALL else (status,)
        return DeliveryFilters(
            statuses=tuple(statuses),
            event_type=data.get("event_type") or "",
            created_from=data.get("created_from"),
            created_to=data.get("created_to"),
            external_event_id=(data.get("q") or "").strip(),
        )


def _page_number(text: str | None) -> int:
    """The page asked for, from 1 to MAX_PAGE (past it, the filters should narrow the list)."""
    try:
        return min(max(1, int(text or 1)), MAX_PAGE)
    except ValueError:
        return 1


def _list_query(params: QueryDict) -> str:
    """The list's filters and page from ``params``, re-encoded (anything else dropped)."""
    kept = QueryDict(mutable=True)
    for name in (*FILTER_FIELDS, "page"):
        if params.get(name):
            kept[name] = params[name]
    return kept.urlencode()


class DeliveryListView(PortalPage, TemplateView):
    template_name = "portal/deliveries.html"

    def get_context_data(self, **kwargs):
        form = DeliveryFilterForm(self.request.GET or None)
        filters = form.filters()
        page = _page_number(self.request.GET.get("page"))
        deliveries, has_next = delivery_page(filters, page=page, per_page=PER_PAGE)
        other_pages = self.request.GET.copy()
        other_pages.pop("page", None)
        return {
            **super().get_context_data(**kwargs),
            "form": form,
            "deliveries": deliveries,
            "page": page,
            "has_next": has_next,
            "page_query": _list_query(other_pages),
            "list_query": _list_query(self.request.GET),
            "can_resend": self.request.user.has_perm("attentive_sync.change_delivery"),
        }


class DeliveryResendView(PortalPage, View):
    """Base of the two buttons: POST only, administrators only, back to the list after."""

    permission_required = ("portal.view_portal", "attentive_sync.change_delivery")
    http_method_names = ["post"]

    def post(self, request, pk: int):
        deliveries = Delivery.objects.filter(pk=pk)
        if not deliveries.exists():
            messages.error(request, f"There is no delivery {pk} (any more).")
        else:
            self.resend(request, deliveries)
        query = _list_query(QueryDict(request.POST.get("list_query", "")))
        return HttpResponseRedirect(reverse("deliveries") + (f"?{query}" if query else ""))

    def resend(self, request, deliveries) -> None:
        raise NotImplementedError

    @staticmethod
    def warn_if_blocked(request) -> None:
        if blocker := AttentiveSettings.load().sending_blocker():
            messages.warning(request, f"It waits until sending can go ahead: {blocker}.")


class DeliveryRetryView(DeliveryResendView):
    def resend(self, request, deliveries) -> None:
        delivery = deliveries.get()
        if delivery_services.retry_now(deliveries):
            messages.success(request, f"Queued an immediate try of {delivery.external_event_id}.")
            self.warn_if_blocked(request)
        elif delivery.is_final:
            messages.warning(
                request,
                f"{delivery.external_event_id} is {delivery.get_status_display()}: nothing to retry. "
                "Use “Replay” to send it again.",
            )
        else:
            messages.warning(request, f"{delivery.external_event_id} is being sent right now: its result will show here.")


class DeliveryReplayView(DeliveryResendView):
    def resend(self, request, deliveries) -> None:
        delivery = deliveries.get()
        if delivery.status == Delivery.Status.DELIVERED and request.POST.get("confirmed") != "yes":
            messages.error(
                request,
                f"{delivery.external_event_id} was already delivered: tick “send it again” to replay it "
                "(Attentive receives it a second time and may trigger journeys again).",
            )
            return
        if delivery_services.replay(deliveries):
            messages.success(request, f"Queued {delivery.external_event_id} to be sent again under the same external event id.")
            self.warn_if_blocked(request)
        elif delivery.leased_until and delivery.leased_until > timezone.now():
            messages.warning(request, f"{delivery.external_event_id} is being sent right now: its result will show here.")
        else:
            max_age = AttentiveSettings.load().max_event_age.total_seconds() / 3600
            messages.warning(
                request,
                f"Not replayed: {delivery.external_event_id} is older than the maximum event age ({max_age:g} h), "
                "so Attentive would not trigger journeys for it.",
            )

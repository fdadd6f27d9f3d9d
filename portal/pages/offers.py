"""The offer pages: the list (by status and name), and one offer with its channels and activity."""

from __future__ import annotations

from django import forms
from django.core.paginator import Paginator
from django.http import Http404
from django.views.generic import TemplateView

from portal.pages.access import PortalPage
from portal.selectors.offers import ACTIVITY_DAYS, NAME_LONGEST, offer_detail, offer_list, offer_statuses

PER_PAGE = 50


class OfferFilterForm(forms.Form):
    status = forms.ChoiceField(required=False)
    name = forms.CharField(label="Name contains", required=False, max_length=NAME_LONGEST)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["status"].choices = [("", "Every status"), *((status, status) for status in offer_statuses())]


class OfferListView(PortalPage, TemplateView):
    template_name = "portal/offer_list.html"

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        form = OfferFilterForm(self.request.GET)
        form.is_valid()
        # A filter with an error is left out; the form shows why.
        filters = {name: value for name, value in form.cleaned_data.items() if name not in form.errors}
        page = Paginator(offer_list(**filters), PER_PAGE).get_page(self.request.GET.get("page"))
        query = self.request.GET.copy()
        query.pop("page", None)
        context.update(form=form, page_obj=page, offers=page.object_list, page_query=query.urlencode())
        return context


class OfferDetailView(PortalPage, TemplateView):
    template_name = "portal/offer_detail.html"

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        detail = offer_detail(sparkfly_id=kwargs["sparkfly_id"])
        if detail is None:
            raise Http404("No such offer is mirrored.")
        context.update(detail=detail, chart_data=detail.activity.chart_data(), activity_days=ACTIVITY_DAYS)
        return context

"""Placeholder until the page is built (issue 6 work in progress)."""

from django.views.generic import TemplateView

from portal.pages.access import PortalPage


class OfferListView(PortalPage, TemplateView):
    template_name = "portal/placeholder.html"


class OfferDetailView(PortalPage, TemplateView):
    template_name = "portal/placeholder.html"

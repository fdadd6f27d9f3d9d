"""Placeholder until the page is built (issue 6 work in progress)."""

from django.views.generic import TemplateView

from portal.pages.access import PortalPage


class DashboardView(PortalPage, TemplateView):
    template_name = "portal/placeholder.html"

"""The member pages: search by identifier, member id, phone or email, and one member's 360."""

from __future__ import annotations

from django.http import Http404
from django.views.generic import TemplateView

from portal.pages.access import PortalPage
from portal.selectors.members import SEARCH_LIMIT, SearchRefused, member_360, member_search


class MemberSearchView(PortalPage, TemplateView):
    template_name = "portal/member_search.html"

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        term = self.request.GET.get("q", "")
        context.update(q=term, limit=SEARCH_LIMIT, result=None, refusal="")
        if term.strip():
            try:
                context["result"] = member_search(term=term)
            except SearchRefused as exc:
                context["refusal"] = str(exc)
        return context


class MemberDetailView(PortalPage, TemplateView):
    template_name = "portal/member_detail.html"

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        profile = member_360(sparkfly_id=kwargs["sparkfly_id"])
        if profile is None:
            raise Http404("No such member is mirrored.")
        context["profile"] = profile
        return context

"""Login throttling and the content-security policy's one scoped exception.

* ``LockoutBackend``: django-axes' lockout check (5 failures of one username from one address
  lock that pair out for 15 minutes, see settings), declining quietly when ``authenticate()`` is
  called without a request (the test client's ``login()``, a shell): with no client address there
  is nothing to throttle, and every web login path — the admin's and the portal's — passes one.
* ``client_ip``: the address axes counts failures against. Behind a load balancer the peer is the
  balancer, so with ``TRUSTED_PROXY_COUNT`` = n the client is the n-th address from the right of
  ``X-Forwarded-For`` (the left part of the header is whatever the client sent, so never trusted).
* ``PortalCSPMiddleware``: django-csp's middleware; the admin's own templates carry inline
  ``<style>`` blocks and ``style`` attributes, so admin pages (only) may use inline styles.
"""

from __future__ import annotations

from axes.backends import AxesStandaloneBackend
from csp.constants import UNSAFE_INLINE
from csp.middleware import CSPMiddleware, PolicyParts
from django.conf import settings
from django.urls import reverse


class LockoutBackend(AxesStandaloneBackend):
    def authenticate(self, request, username=None, password=None, **kwargs):
        if request is None:
            return None
        return super().authenticate(request, username=username, password=password, **kwargs)


def client_ip(request) -> str:
    hops = settings.TRUSTED_PROXY_COUNT
    if hops > 0:
        forwarded = [part.strip() for part in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",") if part.strip()]
        if len(forwarded) >= hops:
            return forwarded[-hops]
    return request.META.get("REMOTE_ADDR", "")


class PortalCSPMiddleware(CSPMiddleware):
    def get_policy_parts(self, request, response, report_only: bool = False) -> PolicyParts:
        parts = super().get_policy_parts(request, response, report_only)
        if request.path_info.startswith(reverse("admin:index")):
            parts.update = {**(parts.update or {}), "style-src": [UNSAFE_INLINE]}
        return parts

"""Where the portal may send its API keys: the outbound allowlist (README "Outbound HTTP").

Each API's key goes only to that API's own hosts (ATTENTIVE_ALLOWED_HOSTS, SPARKFLY_ALLOWED_HOSTS),
over https; this machine's loopback (where the sandboxes run) only when OUTBOUND_ALLOW_LOOPBACK is
on, and there plain http too. The admin form, the settings at start-up and both HTTP clients ask
``refusal()``, the clients right before every request: a URL stored before the rule, or written
to the database directly, still never receives a key.

Plain Python (no Django import), like ``portal/loopback.py``: the callers pass the settings.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from urllib.parse import urlsplit

from urllib3.util import parse_url
from urllib3.exceptions import LocationParseError


def is_loopback(host: str) -> bool:
    """``localhost`` or a loopback address (127.0.0.0/8, ::1), written as requests reads it.
    Other spellings of an address (2130706433, 0x7f.1) are not recognised: they are refused."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def refusal(url: str, *, allowed_hosts: Iterable[str], allow_loopback: bool, service: str, setting: str) -> str:
    """Why ``service``'s key may not be sent to ``url``, or ``""`` when it may.

    The message names the host, never the whole URL (it could carry a password), and says what
    is allowed. ``setting`` is the variable that lists ``allowed_hosts``."""
    try:
        parsed = parse_url(url)
        split = urlsplit(url)
        split_host = split.hostname
        split.port  # noqa: B018 — raises on a port out of range
    except (LocationParseError, ValueError):
        return f"The {service} API URL is not a valid URL."
    host = (parsed.host or "").strip("[]").lower()
    if parsed.scheme not in ("http", "https") or not host:
        return f"The {service} API URL must be an https URL with a host name."
    if parsed.auth or split.username is not None:
        return f"The {service} API URL must not carry a user name or password: give the base URL alone."
    # requests connects to the host urllib3 reads; the rest of the stack re-reads the URL with
    # urllib.parse. A URL the two read differently (a backslash before "@", say) is refused.
    if host != (split_host or "").lower():
        return f"The {service} API URL is ambiguous (its host reads differently to different parsers)."
    allowed = sorted({name.strip().strip("[]").lower() for name in allowed_hosts if name.strip()})
    loopback = is_loopback(host)
    if host not in allowed and not (allow_loopback and loopback):
        listed = ", ".join(allowed) or "none"
        also = " (or this machine's loopback, for the sandboxes)" if allow_loopback else ""
        hint = (
            "The sandboxes on this machine's loopback need OUTBOUND_ALLOW_LOOPBACK=true."
            if loopback
            else f"A deployment that needs another host adds it to {setting}."
        )
        return f"{host} is not an allowed {service} host: the {service} API key is sent only to {listed}{also}. {hint}"
    if parsed.scheme != "https" and not loopback:
        return (
            f"The {service} API URL must use https: over plain http the key would cross the network "
            f"unencrypted (http is allowed only for this machine's loopback)."
        )
    return ""

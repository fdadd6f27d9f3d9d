"""System checks of the Sparkfly settings: a wrong value is named at start-up, not mid-sync."""

from __future__ import annotations

import phonenumbers
from django.conf import settings
from django.core.checks import Error, Warning, register

from sparkfly_sync.client import MEMBERS_MAX_PER_PAGE


@register()
def check_sparkfly_settings(app_configs=None, **kwargs):
    problems = []
    # Whether SPARKFLY_API_URL is a host the key may go to is settled when the settings load
    # (portal/outbound.py): a refused one stops every process before it starts.
    if settings.SPARKFLY_API_URL:
        if not (settings.SPARKFLY_IDENTITY and settings.SPARKFLY_KEY):
            problems.append(
                Error(
                    "SPARKFLY_API_URL is set but SPARKFLY_IDENTITY or SPARKFLY_KEY is not.",
                    hint="Set both to the account id and API key Sparkfly issued.",
                    id="sparkfly_sync.E002",
                )
            )
    elif settings.SPARKFLY_IDENTITY or settings.SPARKFLY_KEY:
        problems.append(
            Warning(
                "SPARKFLY_IDENTITY/SPARKFLY_KEY are set but SPARKFLY_API_URL is not, so nothing is synced.",
                hint=f"Set SPARKFLY_API_URL to {settings.SPARKFLY_PRODUCTION_URL} or {settings.SPARKFLY_STAGING_URL}.",
                id="sparkfly_sync.W002",
            )
        )
    if not 1 <= settings.SPARKFLY_PAGE_SIZE <= MEMBERS_MAX_PER_PAGE:
        problems.append(
            Error(
                f"SPARKFLY_PAGE_SIZE={settings.SPARKFLY_PAGE_SIZE} is outside 1..{MEMBERS_MAX_PER_PAGE}.",
                id="sparkfly_sync.E003",
            )
        )
    for name in ("SPARKFLY_CONNECT_TIMEOUT", "SPARKFLY_READ_TIMEOUT"):
        if getattr(settings, name) <= 0:
            problems.append(Error(f"{name} must be a positive number of seconds.", id="sparkfly_sync.E004"))
    if settings.SPARKFLY_SYNC_INTERVAL_MINUTES < 0:
        problems.append(
            Error("SPARKFLY_SYNC_INTERVAL_MINUTES must be 0 (off) or a number of minutes.", id="sparkfly_sync.E005")
        )
    if settings.MEMBER_PHONE_REGION not in phonenumbers.SUPPORTED_REGIONS:
        problems.append(
            Error(
                f"MEMBER_PHONE_REGION={settings.MEMBER_PHONE_REGION!r} is not a two-letter country code.",
                hint="For example US, CA or GB.",
                id="sparkfly_sync.E006",
            )
        )
    return problems

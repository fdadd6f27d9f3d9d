"""HTTP client of the Sparkfly Platform API.

Every path the portal calls is named once, in the block below; the sandbox
(``sparkfly_sync/sandbox.py``) serves the same constants, so the two cannot drift apart.
"""

from __future__ import annotations

API_PREFIX = "/v1.0"
AUTH_PATH = "/auth"
MEMBERS_PATH = f"{API_PREFIX}/members"
MEMBER_SEARCH_PATH = f"{API_PREFIX}/members/search"
MERCHANTS_PATH = f"{API_PREFIX}/merchants"
STORES_PATH = f"{API_PREFIX}/merchants/{{merchant_id}}/stores"
OFFERS_PATH = f"{API_PREFIX}/offers"
OFFER_APPROVE_PATH = f"{API_PREFIX}/offers/{{offer_id}}/actions/approve"
OFFER_CHANNELS_PATH = f"{API_PREFIX}/offers/{{offer_id}}/channels"
CHANNELS_PATH = f"{API_PREFIX}/channels"
CREDENTIALS_PATH = f"{API_PREFIX}/credentials"
CREDENTIAL_REDEEM_PATH = f"{API_PREFIX}/credentials/{{credential_id}}/redeem"
CREDENTIAL_VOID_PATH = f"{API_PREFIX}/credentials/{{credential_id}}/void"
# ASSUMPTION: Sparkfly's Loyalty API paths are not public (reference/sparkfly-api.md, section 3
# "Loyalty"). These are our choice, modelled on the v1.0 conventions (plural resources, wrapped
# items); when Sparkfly confirms the real ones, change them here and nowhere else.
LOYALTY_PROGRAMS_PATH = f"{API_PREFIX}/loyalty/programs"
LOYALTY_ENROLLMENTS_PATH = f"{API_PREFIX}/loyalty/programs/{{program_id}}/enrollments"
LOYALTY_ENROLLMENT_PATH = f"{API_PREFIX}/loyalty/enrollments/{{enrollment_id}}"

# Sparkfly documents a maximum page size only for members.
MEMBERS_MAX_PER_PAGE = 10000

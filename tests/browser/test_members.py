"""Finding a member and opening their 360 page in a real browser."""

from __future__ import annotations

import uuid

import pytest
from django.utils import timezone

from sparkfly_sync.models import Credential, Member, Redemption
from tests.browser.conftest import log_in, make_user

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_program_manager_searches_a_member_by_email_and_opens_the_360(page, screenshot):
    make_user("pat", "program-manager")
    now = timezone.now()
    Member.objects.create(sparkfly_id=41, identifier="ada-41", email="ada@example.com", phone="+15555550141",
                          first_name="Ada", last_name="Lovelace", synced_at=now)
    Member.objects.create(sparkfly_id=42, identifier="ada-42", email="adam@example.com", synced_at=now)
    Credential.objects.create(sparkfly_id=4101, identifier="CODE-4101", status="redeemed", member_id=41, synced_at=now)
    Redemption.objects.create(dedup_key=uuid.uuid4(), credential_id=4101, offer_id=77, redeemed_at=now, received_at=now)

    page.goto("/members/")
    log_in(page, "pat")
    page.get_by_label("Sparkfly identifier, member id, phone number or email").fill("ADA@example.com")
    page.get_by_role("button", name="Search").click()
    page.wait_for_url("**/members/?q=*")
    results = page.get_by_role("link", name="ada-41")
    assert results.count() == 1 and page.get_by_role("link", name="ada-42").count() == 0
    screenshot(page, "search")

    results.click()
    page.wait_for_url("**/members/41/")
    assert page.get_by_role("heading", level=1).inner_text() == "Ada Lovelace"
    body = page.locator("main").inner_text()
    assert "CODE-4101" in body and "+15555550141" in body
    redemptions = page.get_by_role("region", name="Redemptions").get_by_role("row")
    assert redemptions.count() == 2 and "4101" in redemptions.nth(1).inner_text()  # the header, one redemption
    screenshot(page, "member-360")

"""The offer pages in a real browser: the list links to an offer, whose chart is drawn."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from portal.rollups import rollups_refresh
from sparkfly_sync.models import Channel, Offer, OfferChannel
from tests.browser.conftest import log_in, make_user
from tests.portal import activity

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_program_manager_opens_an_offer_from_the_list_and_sees_its_activity(page, screenshot):
    make_user("pat", "program-manager")
    now = timezone.now()
    Offer.objects.create(sparkfly_id=501, name="Free coffee", status="approved", activates_at=now - timedelta(days=10),
                         synced_at=now)
    Offer.objects.create(sparkfly_id=502, name="Half-price muffin", status="suspended", synced_at=now)
    Channel.objects.create(sparkfly_id=3, name="SMS club", synced_at=now)
    OfferChannel.objects.create(offer_id=501, channel_id=3, xid="XID-501", synced_at=now)
    activity.credential(11, None)
    for _ in range(4):
        activity.redemption(11, 501, now - timedelta(hours=1))
    rollups_refresh()

    page.goto("/offers/")
    log_in(page, "pat")
    assert page.get_by_role("link", name="Half-price muffin").count() == 1
    screenshot(page, "list")

    page.get_by_role("link", name="Free coffee").click()
    page.wait_for_url("**/offers/501/")
    assert "XID-501" in page.get_by_role("region", name="Channels").inner_text()
    page.wait_for_function("() => window.Chart && Chart.getChart(document.getElementById('offer-activity'))")
    redemptions = page.evaluate(
        "Chart.getChart(document.getElementById('offer-activity')).data.datasets"
        ".find(d => d.label === 'Redeemed').data"
    )
    assert sum(redemptions) == 4
    screenshot(page, "offer")

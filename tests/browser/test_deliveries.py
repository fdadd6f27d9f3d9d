"""Replaying a failed delivery from the deliveries page: an administrator can, a program
manager is not offered the button and is refused when posting anyway."""

from __future__ import annotations

import pytest
from django.utils import timezone

from attentive_sync.models import Delivery
from tests.browser.conftest import log_in, make_user

pytestmark = pytest.mark.django_db(transaction=True)


def dead_delivery() -> Delivery:
    return Delivery.objects.create(
        external_event_id="evt-dead-1", event_type="sparkfly.member.offer_state_redeemed",
        payload={"externalEventId": "evt-dead-1"}, occurred_at=timezone.now(), status=Delivery.Status.DEAD,
        attempts=1, last_error="400 Bad Request: user identifiers are missing",
    )


def test_an_administrator_replays_a_dead_delivery(page, screenshot):
    make_user("ari", "administrator")
    delivery = dead_delivery()

    page.goto("/deliveries/")
    log_in(page, "ari")
    row = page.get_by_role("row").filter(has_text="evt-dead-1")
    assert "user identifiers are missing" in row.inner_text()
    screenshot(page, "before")

    row.get_by_role("button", name="Replay evt-dead-1").click()
    page.wait_for_load_state()
    assert "Queued evt-dead-1 to be sent again" in page.get_by_role("status").first.inner_text()
    screenshot(page, "after")
    delivery.refresh_from_db()
    assert delivery.status == Delivery.Status.PENDING


def test_a_program_manager_has_no_replay_button_and_a_forged_post_is_refused(page, screenshot):
    make_user("pat", "program-manager")
    delivery = dead_delivery()

    page.goto("/deliveries/")
    log_in(page, "pat")
    row = page.get_by_role("row").filter(has_text="evt-dead-1")
    assert row.count() == 1 and row.get_by_role("button").count() == 0
    screenshot(page, "no-buttons")

    # The request the button would send, from the signed-in browser with its CSRF token.
    status = page.evaluate(
        """async (url) => {
            const token = document.cookie.split('; ').find(c => c.startsWith('csrftoken=')).split('=')[1];
            const response = await fetch(url, {method: 'POST', headers: {'X-CSRFToken': token}, body: new FormData()});
            return response.status;
        }""",
        f"/deliveries/{delivery.pk}/replay/",
    )
    assert status == 403
    delivery.refresh_from_db()
    assert delivery.status == Delivery.Status.DEAD

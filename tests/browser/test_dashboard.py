"""The dashboard in a real browser: the charts are drawn from the page's JSON, with the data."""

from __future__ import annotations

from datetime import datetime, timedelta

from django.utils import timezone

from portal.rollups import rollups_refresh
from tests.browser.conftest import log_in, make_user
from tests.portal import activity


def test_a_program_manager_sees_the_charts_drawn_with_the_data(page, screenshot):
    make_user("pat", "program-manager")
    activity.program(7, "Gold")
    activity.member(1, 7)
    activity.credential(11, 1)
    today = timezone.localdate()
    for days_ago, count in [(0, 3), (4, 2)]:
        noon = timezone.make_aware(datetime.combine(today - timedelta(days=days_ago), datetime.min.time())) + timedelta(hours=12)
        for _ in range(count):
            activity.redemption(11, 501, noon, store_id=901)
    rollups_refresh()

    page.goto("/")
    log_in(page, "pat")
    page.wait_for_selector("html[data-charts-drawn='3']")
    drawn = page.evaluate("Chart.getChart(document.getElementById('chart-redemptions')).data.datasets[0].data")
    assert len(drawn) == 30 and drawn[-1] == 3 and drawn[-5] == 2 and sum(drawn) == 5
    assert page.locator("#total-redemptions").inner_text() == "5"
    screenshot(page, "dashboard")

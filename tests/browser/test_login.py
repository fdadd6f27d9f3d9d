"""Logging in and out in a real browser."""

import pytest

from tests.browser.conftest import log_in, make_user

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_program_manager_logs_in_lands_on_the_dashboard_and_logs_out(page, screenshot):
    make_user("pat", "program-manager")
    page.goto("/members/")
    assert "/accounts/login/" in page.url
    screenshot(page, "login")

    log_in(page, "pat")
    assert page.url.endswith("/members/")
    page.goto("/")
    assert page.get_by_role("link", name="Dashboard").get_attribute("aria-current") == "page"
    screenshot(page, "dashboard")

    page.get_by_role("button", name="Log out").click()
    page.wait_for_url("**/accounts/login/")
    page.goto("/")
    assert "/accounts/login/" in page.url


def test_a_wrong_password_is_refused_with_a_message(page):
    make_user("pat", "program-manager")
    page.goto("/accounts/login/")
    page.get_by_label("Username").fill("pat")
    page.get_by_label("Password").fill("not the password")
    page.get_by_role("button", name="Log in").click()
    assert page.get_by_role("alert").inner_text().startswith("Your username and password didn't match")

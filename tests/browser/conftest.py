"""Browser tests: Debian's chromium, driven by Playwright, against pytest-django's live server.

No browser is downloaded: Playwright launches the system's chromium (`make test` installs it).
A missing chromium fails these tests with the command to fix it; they are never skipped.
Each test saves a screenshot of the pages it visits under ``test-artifacts/screenshots/``.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest
from django.contrib.auth.models import User

from portal.roles import user_assign_role

SCREENSHOTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "screenshots"
PASSWORD = "browser-test-password"
# Without the background-networking flags chromium keeps trying to reach Google's hosts,
# which this machine's closed network refuses.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium_path() -> str:
    path = os.environ.get("PORTAL_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        pytest.fail("Debian's chromium is not installed: run `make test` (it installs it) or `apt-get install chromium`")
    return path


@pytest.fixture(scope="package")
def browser():
    """One chromium for this package's tests. Package-scoped, not session-scoped: Playwright's
    sync API keeps an event loop running in this thread until it stops, and tests elsewhere
    run procrastinate workers with ``asyncio.run``, which refuses to start inside one."""
    from playwright.sync_api import sync_playwright

    # Meanwhile the tests' own database work is still plain synchronous code, which Django's
    # async-safety guard would refuse under a running loop.
    previous = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium_path(), headless=True, args=CHROMIUM_ARGS)
            yield browser
            browser.close()
    finally:
        if previous is None:
            os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
        else:
            os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = previous


@pytest.fixture
def page(browser, live_server):
    context = browser.new_context(base_url=live_server.url, viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(15_000)
    yield page
    context.close()


@pytest.fixture
def screenshot(request):
    """``screenshot(page, "name")`` saves ``<test name>-<name>.png`` as a test artifact."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    test_name = re.sub(r"[^\w-]+", "-", request.node.name)

    def take(page, name: str) -> Path:
        path = SCREENSHOTS / f"{test_name}-{name}.png"
        page.screenshot(path=str(path), full_page=True)
        return path

    return take


def make_user(username: str, role: str | None) -> User:
    user = User.objects.create_user(username, f"{username}@example.com", PASSWORD)
    if role:
        user_assign_role(user=user, role=role)
    return user


def log_in(page, username: str) -> None:
    """Fill in the login form: the one on screen (after a redirect, keeping its ``next``), or
    the login page's."""
    if "/accounts/login/" not in page.url:
        page.goto("/accounts/login/")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_load_state()

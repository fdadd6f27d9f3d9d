"""Production security settings: `check --deploy` is clean, https is enforced except for the load
balancer's checks, every page carries a content-security policy with narrow exceptions, and
repeated failed logins lock a username + address out."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.test import Client
from django.urls import reverse

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "a correct Passw0rd!"


def production_env(**overrides) -> dict:
    """What a deployment sets: a real key and host names; every https default left alone."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("SECURE_", "DEBUG"))}
    env.update(SECRET_KEY=secrets.token_urlsafe(50), ALLOWED_HOSTS="portal.example.com", DEBUG="false")
    env.update(overrides)
    return env


def test_check_deploy_reports_nothing_with_production_settings():
    result = subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), "check", "--deploy", "--fail-level", "WARNING"],
        env=production_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout


def test_check_deploy_still_catches_a_weak_key():
    result = subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), "check", "--deploy", "--fail-level", "WARNING"],
        env=production_env(SECRET_KEY="short"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "security.W009" in result.stderr + result.stdout


@pytest.fixture
def https_enforced(settings):
    """The production defaults the test run turns off (SECURE_SSL_REDIRECT=false in pytest's env)."""
    settings.SECURE_SSL_REDIRECT = True
    settings.SESSION_COOKIE_SECURE = settings.CSRF_COOKIE_SECURE = True
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    return settings


@pytest.mark.django_db
def test_plain_http_is_redirected_to_https_except_health_checks(https_enforced):
    client = Client()
    login = client.get("/admin/login/")
    assert login.status_code == 301
    assert login["Location"] == "https://testserver/admin/login/"
    health = client.get("/healthz")
    assert health.status_code == 200  # answered over http: the load balancer's check


@pytest.mark.django_db
def test_behind_the_proxy_https_requests_get_hsts_and_secure_cookies(https_enforced):
    client = Client(HTTP_X_FORWARDED_PROTO="https")
    page = client.get(reverse("login"))
    assert page.status_code == 200
    assert page["Strict-Transport-Security"] == "max-age=31536000; includeSubDomains; preload"
    assert page.cookies["csrftoken"]["secure"]


@pytest.mark.django_db
def test_every_page_has_a_strict_content_security_policy(admin_client):
    login = Client().get(reverse("login"))
    policy = login["Content-Security-Policy"]
    assert "default-src 'self'" in policy and "script-src 'self'" in policy and "style-src 'self'" in policy
    assert "unsafe-inline" not in policy
    assert "frame-ancestors 'none'" in policy
    assert login["X-Frame-Options"] == "DENY"
    assert login["Referrer-Policy"] == "same-origin"

    # The admin's templates carry inline styles: allowed there, scripts still only from files.
    admin = admin_client.get("/admin/")
    directives = dict(part.strip().split(" ", 1) for part in admin["Content-Security-Policy"].split(";"))
    assert "'unsafe-inline'" in directives["style-src"]
    assert "'unsafe-inline'" not in directives["script-src"]

    # Redoc's page: inline start-up script and styles, a blob: worker; that page only.
    docs = Client().get(reverse("api-docs"))
    directives = dict(part.strip().split(" ", 1) for part in docs["Content-Security-Policy"].split(";"))
    assert "'unsafe-inline'" in directives["script-src"]
    assert "blob:" in directives["worker-src"]


@pytest.fixture
def staff_user(db):
    return get_user_model().objects.create_user("sam", password=PASSWORD, is_staff=True, is_superuser=True)


def attempt(client: Client, url: str, password: str, address: str):
    return client.post(url, {"username": "sam", "password": password}, REMOTE_ADDR=address)


@pytest.mark.django_db
@pytest.mark.parametrize("login_url", ["/admin/login/", "/accounts/login/"], ids=["admin", "portal"])
def test_five_failed_logins_lock_the_username_at_that_address(staff_user, login_url):
    client = Client()
    for _ in range(4):
        assert attempt(client, login_url, "wrong", "203.0.113.7").status_code == 200
    locked = attempt(client, login_url, "wrong", "203.0.113.7")
    assert locked.status_code == 429
    assert "Too many failed logins" in locked.content.decode()
    assert "locked for 15 minutes" in " ".join(locked.content.decode().split())

    # Even the right password is refused now, from that address ...
    assert attempt(client, login_url, PASSWORD, "203.0.113.7").status_code == 429
    # ... while the same person from another address still gets in.
    assert attempt(Client(), login_url, PASSWORD, "198.51.100.9").status_code == 302

    call_command("axes_reset", verbosity=0)
    assert attempt(Client(), login_url, PASSWORD, "203.0.113.7").status_code == 302


@pytest.mark.django_db
def test_behind_a_proxy_the_client_address_comes_from_x_forwarded_for(staff_user, settings):
    settings.TRUSTED_PROXY_COUNT = 1
    client = Client()
    for n in range(5):
        # The balancer's own address (REMOTE_ADDR) is the same for everyone; a forged left part is ignored.
        client.post(
            "/admin/login/", {"username": "sam", "password": "wrong"},
            REMOTE_ADDR="10.0.0.2", HTTP_X_FORWARDED_FOR=f"1.2.3.{n}, 203.0.113.7",
        )
    assert client.post(
        "/admin/login/", {"username": "sam", "password": PASSWORD},
        REMOTE_ADDR="10.0.0.2", HTTP_X_FORWARDED_FOR="203.0.113.7",
    ).status_code == 429
    assert Client().post(
        "/admin/login/", {"username": "sam", "password": PASSWORD},
        REMOTE_ADDR="10.0.0.2", HTTP_X_FORWARDED_FOR="198.51.100.9",
    ).status_code == 302

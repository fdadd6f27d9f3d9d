"""Optional two-factor login for staff: off, the admin takes a password; with
REQUIRE_STAFF_2FA on, it also wants a code from an authenticator enrolled on the portal's page."""

from __future__ import annotations

import time

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.test import Client
from django.urls import reverse
from django_otp.oath import TOTP
from django_otp.plugins.otp_totp.models import TOTPDevice

PASSWORD = "a correct Passw0rd!"
pytestmark = pytest.mark.django_db


@pytest.fixture
def staff(db):
    return get_user_model().objects.create_user("tess", password=PASSWORD, is_staff=True, is_superuser=True)


def code(device: TOTPDevice, steps_ahead: int = 0) -> str:
    """What the person's authenticator app shows (``steps_ahead`` 30-second steps later)."""
    totp = TOTP(device.bin_key, device.step, device.t0, device.digits, device.drift)
    totp.time = time.time() + steps_ahead * device.step
    return f"{totp.token():06d}"


def admin_login(client: Client, **fields):
    return client.post("/admin/login/?next=/admin/", {"username": "tess", "password": PASSWORD, **fields})


def test_off_by_default_the_admin_takes_a_password(staff):
    client = Client()
    assert admin_login(client).status_code == 302
    assert client.get("/admin/").status_code == 200


def test_required_the_admin_wants_a_code_from_an_enrolled_authenticator(staff, settings):
    settings.REQUIRE_STAFF_2FA = True
    settings.OTP_TOTP_THROTTLE_FACTOR = 0  # django-otp's own back-off after a wrong code: not timed here
    refused = Client()
    page = admin_login(refused)
    assert page.status_code == 200 and "otp_token" in page.content.decode()
    assert refused.get("/admin/").status_code == 302  # back to the login page

    # Enroll through the portal: log in with the password, scan, confirm one code.
    person = Client()
    assert person.post(reverse("login"), {"username": "tess", "password": PASSWORD}).status_code == 302
    setup = person.get(reverse("two-factor"))
    assert 'src="data:image/svg+xml;base64,' in setup.content.decode()
    device = TOTPDevice.objects.get(user=staff, confirmed=False)
    assert "did not match" in person.post(reverse("two-factor"), {"token": "000000"}).content.decode()
    device.refresh_from_db()
    assert person.post(reverse("two-factor"), {"token": code(device)}).status_code == 302
    device.refresh_from_db()
    assert device.confirmed

    # A fresh browser: password, the device (offered once the password matched) and the app's
    # (next) code admit; a wrong code does not.
    first = admin_login(Client())
    assert device.persistent_id in first.content.decode()
    assert admin_login(Client(), otp_device=device.persistent_id, otp_token="123456").status_code == 200
    client = Client()
    admitted = admin_login(client, otp_device=device.persistent_id, otp_token=code(device, steps_ahead=1))
    assert admitted.status_code == 302, admitted.context["form"].errors
    assert client.get("/admin/").status_code == 200

    # A lost phone: the reset removes the device, and the admin is closed again until re-enrollment.
    call_command("two_factor_reset", "tess", verbosity=0)
    assert not TOTPDevice.objects.filter(user=staff).exists()
    assert admin_login(Client(), otp_device=device.persistent_id, otp_token=code(device, steps_ahead=2)).status_code == 200


def portal_login(client: Client, username: str = "tess"):
    assert client.post(reverse("login"), {"username": username, "password": PASSWORD}).status_code == 302
    return client


def test_required_the_portal_pages_want_the_code_from_staff_too(staff, settings):
    """Administrators retry and replay deliveries on the portal's pages: a password alone must
    not reach them when the admin would want a code."""
    settings.REQUIRE_STAFF_2FA = True
    settings.OTP_TOTP_THROTTLE_FACTOR = 0
    dashboard = reverse("dashboard")

    # Not enrolled yet: sent to enroll; enrolling verifies this session, and the pages open.
    person = portal_login(Client())
    assert person.get(dashboard)["Location"] == reverse("two-factor")
    person.get(reverse("two-factor"))
    device = TOTPDevice.objects.get(user=staff, confirmed=False)
    assert person.post(reverse("two-factor"), {"token": code(device)}).status_code == 302
    assert person.get(dashboard).status_code == 200

    # Enrolled, a new browser signed in by password: sent to the admin's login for the code,
    # which brings the person back to the page asked for.
    client = portal_login(Client())
    sent_to = client.get(dashboard + "?days=7")["Location"]
    assert sent_to == "/admin/login/?next=%2F%3Fdays%3D7"
    assert client.get(reverse("deliveries")).status_code == 302
    back = client.post(
        sent_to, {"username": "tess", "password": PASSWORD, "otp_device": device.persistent_id,
                  "otp_token": code(device, steps_ahead=1)},
    )
    assert back.status_code == 302 and back["Location"] == dashboard + "?days=7"
    assert client.get(dashboard).status_code == 200


def test_required_people_who_are_not_staff_keep_signing_in_by_password(staff, settings):
    from portal.roles import PROGRAM_MANAGERS
    from django.contrib.auth.models import Group

    settings.REQUIRE_STAFF_2FA = True
    manager = get_user_model().objects.create_user("pat", password=PASSWORD)
    manager.groups.add(Group.objects.get(name=PROGRAM_MANAGERS))
    assert portal_login(Client(), "pat").get(reverse("dashboard")).status_code == 200


def test_off_by_default_staff_reach_the_portal_by_password(staff):
    assert portal_login(Client()).get(reverse("dashboard")).status_code == 200

"""`make run` end to end: the launcher starts web, worker and sandbox, and Ctrl-C stops all."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from django.contrib.auth import get_user_model

from portal.management.commands.runportal import _ensure_demo_admin
from attentive_sync.models import AttentiveSettings
from sparkfly_sync.models import Member
from sparkfly_sync.client import SparkflyClient
from tests.conftest import database_url_for_subprocess, free_port

ROOT = Path(__file__).resolve().parents[2]


def wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}")


def answers(url: str) -> requests.Response | None:
    try:
        return requests.get(url, timeout=2, allow_redirects=False)
    except requests.ConnectionError:
        return None


@pytest.mark.django_db(transaction=True)
def test_runportal_serves_the_whole_portal_and_stops_everything_on_ctrl_c(tmp_path):
    port, sandbox_port, attentive_port = free_port(), free_port(), free_port()
    env = {
        **os.environ,
        "DEBUG": "true",
        "DATA_DIR": str(tmp_path),
        "DATABASE_URL": database_url_for_subprocess("runportal-under-test"),
        "PORT": str(port),
        "SANDBOX_PORT": str(sandbox_port),
        "ATTENTIVE_SANDBOX_PORT": str(attentive_port),
    }
    launcher = subprocess.Popen(
        [sys.executable, str(ROOT / "manage.py"), "runportal", "--sandbox-members", "120"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        health = wait_for(
            lambda: (r := answers(f"{base}/healthz?full")) is not None and r.status_code == 200 and r, 90, "/healthz?full 200"
        )
        assert health.json()["worker"] == "ok"  # the worker runs and beats
        assert answers(f"http://127.0.0.1:{sandbox_port}/auth").status_code == 401  # the sandbox is up
        # No Attentive key was configured: the Attentive sandbox runs and the settings use it.
        assert answers(f"http://127.0.0.1:{attentive_port}/_sandbox/received").status_code == 200
        attentive = AttentiveSettings.load()
        assert (attentive.api_url, attentive.key, attentive.enabled) == (f"http://127.0.0.1:{attentive_port}", "sandbox", True)
        login = (tmp_path / "demo-admin.txt").read_text().strip()
        username, password = re.fullmatch(r"(\S+) / (\S+)", login).groups()
        session = requests.Session()
        session.get(f"{base}/admin/login/")
        signed_in = session.post(
            f"{base}/admin/login/?next=/admin/",
            data={"username": username, "password": password, "csrfmiddlewaretoken": session.cookies["csrftoken"]},
        )
        assert signed_in.url.endswith("/admin/") and "Log out" in signed_in.text
        dashboard = session.get(f"{base}/")  # the program-manager pages, with their assets
        assert dashboard.status_code == 200 and "Log out" in dashboard.text
        assert session.get(f"{base}/static/vendor/chartjs-4.6.1/chart.umd.min.js").status_code == 200
        # The worker's periodic job mirrors the sandbox with no one asking.
        wait_for(lambda: Member.objects.count() == 120, 90, "the worker to mirror the sandbox's 120 members")
        # The sandbox's channels call the portal: a redemption there reaches Attentive's sandbox.
        sparkfly = SparkflyClient(base_url=f"http://127.0.0.1:{sandbox_port}", identity="sandbox", key="sandbox")
        wait_for(
            lambda: all(
                (item["channel"]["conversion_callback_url"] or "").startswith(f"{base}/hooks/sparkfly/channels/")
                for item in sparkfly.get("/v1.0/channels")["channels"]
            ),
            60,
            "every sandbox channel to have the portal's conversion callback",
        )
        credential = _redeem_at_the_sandbox(sparkfly)
        received = wait_for(
            lambda: answers(f"http://127.0.0.1:{attentive_port}/_sandbox/received").json()["events"], 60,
            "the redemption to reach the Attentive sandbox",
        )
        assert [event["body"]["type"] for event in received] == ["sparkfly.member.offer_state_redeemed"]
        assert received[0]["body"]["properties"]["credential_identifier"] == credential["identifier"]
    finally:
        launcher.send_signal(signal.SIGINT)
        output, _ = launcher.communicate(timeout=30)
    assert f"portal      {base}/   login: {login}" in output
    assert answers(f"{base}/healthz") is None and answers(f"http://127.0.0.1:{sandbox_port}/auth") is None
    assert answers(f"http://127.0.0.1:{attentive_port}/_sandbox/received") is None


def _redeem_at_the_sandbox(sparkfly: SparkflyClient) -> dict:
    """Issue a credential for a running offer to a member, and redeem it; returns the credential."""
    from datetime import datetime, timezone

    for item in sparkfly.get("/v1.0/offers", per_page=100)["offers"]:
        offer = sparkfly.get(f"/v1.0/offers/{item['offer']['id']}")["offer"]
        if offer["status"] == "approved" and offer["channels"] and datetime.fromisoformat(offer["expires_at"]) > datetime.now(timezone.utc):
            break
    member_id = sparkfly.get("/v1.0/members", per_page=1)["members"][0]["member"]["id"]
    fields = {"member_id": member_id, "channel_id": offer["channels"][0]["channel"]["id"], "offer_id": offer["id"]}
    credential = sparkfly.request("POST", "/v1.0/credentials", json_body={"credential": fields}, idempotent=False)["credential"]
    return sparkfly.request("PUT", f"/v1.0/credentials/{credential['id']}/redeem")["credential"]


@pytest.mark.django_db
def test_an_existing_admin_account_is_never_taken_over(tmp_path):
    user = get_user_model().objects.create_user("admin", password="the-owners-password")
    login = _ensure_demo_admin(tmp_path / "demo-admin.txt")
    user.refresh_from_db()
    assert user.check_password("the-owners-password") and not user.is_superuser
    assert "existing account" in login and not (tmp_path / "demo-admin.txt").exists()


@pytest.mark.django_db
def test_a_real_attentive_configuration_is_never_replaced_by_the_sandbox():
    from portal.management.commands.runportal import _attentive_is_unconfigured_or_a_sandbox

    settings = AttentiveSettings.load()
    assert _attentive_is_unconfigured_or_a_sandbox()  # nothing configured yet
    settings.api_key, settings.api_url = "sk_live_REAL", "https://api.attentivemobile.com"
    settings.save()
    assert not _attentive_is_unconfigured_or_a_sandbox()

"""Mirror sync against the sandbox over HTTP, into the real PostgreSQL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from django.db import connection, connections

from tests.conftest import database_url_for_subprocess, wait_for_backends_to_end

from sparkfly_sync import client as api
from sparkfly_sync.models import (
    Channel,
    Credential,
    LoyaltyEnrollment,
    LoyaltyProgram,
    Member,
    Merchant,
    Offer,
    OfferChannel,
    Store,
    SyncRun,
)
from sparkfly_sync.sync import RESOURCES, SyncAlreadyRunning, sync_all, sync_resource

pytestmark = pytest.mark.django_db

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def ten_thousand_members(sparkfly_sandbox_factory):
    return sparkfly_sandbox_factory(members=10_000)


def client_for(server, recorded_sleeps=None):
    from sparkfly_sync.client import RetryPolicy, SparkflyClient

    return SparkflyClient(
        base_url=server.base_url,
        identity="sandbox",
        key="sandbox",
        retry=RetryPolicy(attempts=2, backoff=0.01),
        sleep=recorded_sleeps if recorded_sleeps is not None else (lambda seconds: None),
    )


def test_a_10000_member_account_mirrors_completely(ten_thousand_members):
    run = sync_resource("members", client=client_for(ten_thousand_members), per_page=1000)
    assert (run.status, run.pages, run.created, run.updated, run.errors) == ("succeeded", 10, 10_000, 0, 0)
    assert run.checkpoint is None and run.finished_at is not None
    assert Member.objects.count() == 10_000
    sample_id = Member.objects.order_by("sparkfly_id").values_list("sparkfly_id", flat=True)[4321]
    sample = client_for(ten_thousand_members).get(f"{api.MEMBERS_PATH}/{sample_id}")["member"]
    mirrored = Member.objects.get(sparkfly_id=sample_id)
    assert mirrored.identifier == sample["identifier"]
    assert mirrored.raw == sample
    emails = Member.objects.exclude(email="").values_list("email", flat=True)
    assert emails.count() > 5000 and all(email == email.lower() and "@" in email for email in emails[:500])
    phones = Member.objects.exclude(phone="").values_list("phone", flat=True)
    assert phones.count() > 5000 and all(phone.startswith("+") for phone in phones[:500])


def test_a_second_run_changes_nothing(ten_thousand_members):
    client = client_for(ten_thousand_members)
    sync_resource("members", client=client, per_page=2500)
    synced_at_before = dict(Member.objects.values_list("sparkfly_id", "synced_at"))
    second = sync_resource("members", client=client, per_page=2500)
    assert (second.status, second.created, second.updated, second.unchanged) == ("succeeded", 0, 0, 10_000)
    assert dict(Member.objects.values_list("sparkfly_id", "synced_at")) == synced_at_before


def test_a_change_at_sparkfly_updates_only_that_member(sparkfly_sandbox):
    client = client_for(sparkfly_sandbox)
    sync_resource("members", client=client)
    first_id = Member.objects.order_by("sparkfly_id").values_list("sparkfly_id", flat=True).first()
    client.request("PUT", f"{api.MEMBERS_PATH}/{first_id}", json_body={"member": {"notification_mode": "email"}})
    run = sync_resource("members", client=client)
    assert (run.created, run.updated, run.unchanged) == (0, 1, 49)
    assert Member.objects.get(sparkfly_id=first_id).notification_mode == "email"


def test_a_sandbox_500_marks_the_run_failed_and_keeps_what_was_committed(sparkfly_sandbox):
    sparkfly_sandbox.sandbox.inject_fault(api.MEMBERS_PATH, status=500, body='{"error":"db down"}', after=2, times=50)
    run = sync_resource("members", client=client_for(sparkfly_sandbox), per_page=10)
    assert run.status == "failed"
    assert "500" in run.failure and "db down" in run.failure
    assert run.pages == 2 and run.checkpoint == {"stream": "all", "page": 2, "per_page": 10}
    assert Member.objects.count() == 20  # the two committed pages, nothing half-written


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ('{"members": [', "not JSON"),
        ("<html>oops</html>", "not JSON"),
        ('{"page": 3, "people": []}', "no 'members' list"),
        ('{"members": [{"id": 5}]}', "expected {'member'"),
    ],
)
def test_garbage_from_sparkfly_fails_the_run_with_the_reason(sparkfly_sandbox, body, reason):
    sparkfly_sandbox.sandbox.inject_fault(api.MEMBERS_PATH, status=200, body=body, after=1)
    run = sync_resource("members", client=client_for(sparkfly_sandbox), per_page=10)
    assert run.status == "failed" and reason in run.failure
    assert Member.objects.count() == 10


def test_a_bad_item_is_skipped_and_counted_while_the_rest_mirrors(sparkfly_sandbox):
    page = (
        '{"page":1,"per_page":3,"total_entries":3,"total_pages":1,"members":['
        '{"member":{"id":1,"identifier":"a"}},{"member":{"identifier":"no-id"}},{"member":{"id":3,"identifier":"c"}}]}'
    )
    sparkfly_sandbox.sandbox.inject_fault(api.MEMBERS_PATH, status=200, body=page)
    run = sync_resource("members", client=client_for(sparkfly_sandbox), per_page=3)
    assert (run.status, run.created, run.errors) == ("succeeded", 2, 1)
    assert "member 2 of page 1: missing 'id'" in run.error_samples[0]


def test_a_failed_run_is_resumed_from_the_page_after_its_checkpoint(sparkfly_sandbox):
    client = client_for(sparkfly_sandbox)
    sparkfly_sandbox.sandbox.inject_fault(api.MEMBERS_PATH, status=503, after=3, times=50)
    failed = sync_resource("members", client=client, per_page=10)
    assert failed.status == "failed" and failed.pages == 3
    sparkfly_sandbox.sandbox.clear_faults()
    log_start = len(sparkfly_sandbox.sandbox.requests_log)
    resumed = sync_resource("members", client=client, per_page=10)
    assert resumed.pk == failed.pk and resumed.resumed == 1
    assert (resumed.status, resumed.pages, resumed.created) == ("succeeded", 5, 50)
    later = [r.query for r in sparkfly_sandbox.sandbox.requests_log[log_start:] if r.path == api.MEMBERS_PATH]
    assert "page=4" in later[0]


@pytest.mark.django_db(transaction=True)
def test_a_run_killed_mid_way_resumes_where_it_stopped(ten_thousand_members):
    """A real crash: the sync runs in another process, which is SIGKILLed mid-way."""
    env = {
        **os.environ,
        "DATABASE_URL": database_url_for_subprocess("killed-sync"),
        "SPARKFLY_API_URL": ten_thousand_members.base_url,
        "SPARKFLY_IDENTITY": "sandbox",
        "SPARKFLY_KEY": "sandbox",
    }
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "manage.py"), "sync_sparkfly", "members", "--per-page", "50", "-v", "0"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and process.poll() is None:
            run = SyncRun.objects.filter(resource="members").first()
            if run is not None and run.pages >= 5:
                break
            time.sleep(0.005)
        assert process.poll() is None, f"the sync ended before it could be killed: {process.stderr.read()!r}"
        process.send_signal(signal.SIGKILL)
        process.wait(10)
    finally:
        if process.poll() is None:
            process.kill()
    wait_for_backends_to_end("killed-sync")
    crashed = SyncRun.objects.get(resource="members")
    assert crashed.status == "running" and crashed.finished_at is None  # nobody got to record the crash
    committed_pages = crashed.checkpoint["page"]
    assert 5 <= committed_pages < 200
    assert Member.objects.count() == committed_pages * 50  # every committed page whole, no partial one

    log_start = len(ten_thousand_members.sandbox.requests_log)
    resumed = sync_resource("members", client=client_for(ten_thousand_members), per_page=50)
    assert resumed.pk == crashed.pk and resumed.resumed == 1 and resumed.status == "succeeded"
    assert resumed.pages == 200 and resumed.created == 10_000
    assert Member.objects.count() == 10_000
    first_query = next(r.query for r in ten_thousand_members.sandbox.requests_log[log_start:] if r.path == api.MEMBERS_PATH)
    assert f"page={committed_pages + 1}&" in first_query + "&"


def test_everything_mirrors_in_dependency_order(sparkfly_sandbox):
    runs = sync_all(client=client_for(sparkfly_sandbox))
    assert [run.resource for run in runs] == list(RESOURCES)
    assert all(run.status == "succeeded" for run in runs), [(run.resource, run.failure) for run in runs]
    client = client_for(sparkfly_sandbox)
    assert Merchant.objects.count() == 2 and Store.objects.count() == 6
    assert Channel.objects.count() == 3 and Offer.objects.count() == 10
    assert Member.objects.count() == 50
    assert LoyaltyProgram.objects.count() >= 1 and LoyaltyEnrollment.objects.count() > 0
    links = OfferChannel.objects.all()
    assert links.count() >= 10 and all(len(link.xid) == 7 for link in links)
    assert Credential.objects.count() == client.get(api.CREDENTIALS_PATH)["total_entries"]
    # Sparkfly's enrollment list has no tier_id; the mirror shows none rather than inventing one.
    assert LoyaltyEnrollment.objects.filter(tier_id__isnull=False).count() == 0


def test_a_removed_channel_link_disappears_from_the_mirror(sparkfly_sandbox):
    client = client_for(sparkfly_sandbox)
    sync_resource("channels", client=client)
    sync_resource("offers", client=client)
    link = OfferChannel.objects.order_by("pk").first()
    client.request(
        "DELETE", api.OFFER_CHANNELS_PATH.format(offer_id=link.offer_id), json_body={"offer": {"channel_ids": [link.channel_id]}}
    )
    sync_resource("offers", client=client)
    assert not OfferChannel.objects.filter(offer_id=link.offer_id, channel_id=link.channel_id).exists()


def test_two_syncs_of_one_resource_cannot_run_at_once(sparkfly_sandbox):
    other = connections.create_connection("default")
    try:
        with other.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_lock(hashtext('sparkfly_sync:members'))")
        with pytest.raises(SyncAlreadyRunning):
            sync_resource("members", client=client_for(sparkfly_sandbox))
        # A full sync skips the busy resource and still does the others.
        runs = sync_all(client=client_for(sparkfly_sandbox), resources=["channels", "members"])
        assert [(run.resource, run.status) for run in runs] == [("channels", "succeeded")]
        with other.cursor() as cursor:
            # Released here, not by close(): the server ends a closed session a moment later.
            cursor.execute("SELECT pg_advisory_unlock(hashtext('sparkfly_sync:members'))")
    finally:
        other.close()
    assert sync_resource("members", client=client_for(sparkfly_sandbox)).status == "succeeded"


def test_the_command_prints_a_summary_and_rejects_unknown_resources(sparkfly_settings, capsys):
    call_command("sync_sparkfly", "channels", "members", verbosity=1)
    out = capsys.readouterr().out
    assert "members: succeeded — 1 pages, 50 created" in out
    assert "channels: succeeded" in out
    with pytest.raises(CommandError, match="unknown resource.*memberz"):
        call_command("sync_sparkfly", "memberz")


def test_the_command_fails_loudly_with_the_reason(sparkfly_settings, sparkfly_sandbox):
    # A 4xx is not retried, so the failure is reported at once.
    sparkfly_sandbox.sandbox.inject_fault(api.CHANNELS_PATH, status=403, body='{"error":"account suspended"}')
    with pytest.raises(CommandError, match="(?s)channels: .*403.*account suspended.*Run it again to resume"):
        call_command("sync_sparkfly", "channels", verbosity=0)


def test_the_command_explains_missing_configuration(settings):
    settings.SPARKFLY_API_URL = ""
    with pytest.raises(Exception, match="SPARKFLY_API_URL"):
        call_command("sync_sparkfly", "members", verbosity=0)


def test_a_resumed_run_keeps_the_page_size_its_checkpoint_counted_in(sparkfly_sandbox):
    client = client_for(sparkfly_sandbox)
    sparkfly_sandbox.sandbox.inject_fault(api.MEMBERS_PATH, status=503, after=2, times=50)
    failed = sync_resource("members", client=client, per_page=5)
    assert failed.checkpoint == {"stream": "all", "page": 2, "per_page": 5}
    sparkfly_sandbox.sandbox.clear_faults()
    resumed = sync_resource("members", client=client, per_page=25)  # page 3 at 25 would skip 40 members
    assert resumed.status == "succeeded"
    assert Member.objects.count() == 50


def test_a_parent_deleted_at_sparkfly_skips_its_list_and_the_rest_syncs(sparkfly_sandbox):
    client = client_for(sparkfly_sandbox)
    sync_resource("merchants", client=client)
    first, second = Merchant.objects.order_by("sparkfly_id").values_list("sparkfly_id", flat=True)
    sparkfly_sandbox.sandbox.inject_fault(
        api.STORES_PATH.format(merchant_id=first), status=404, body='{"trace":"x","error":"Not Found"}', times=10
    )
    run = sync_resource("stores", client=client)
    assert run.status == "succeeded" and run.errors == 1
    assert "is gone at Sparkfly (404); skipped" in run.error_samples[0]
    assert set(Store.objects.values_list("merchant_id", flat=True)) == {second}


def test_nul_characters_nan_and_oversized_ids_cannot_poison_a_page(sparkfly_sandbox):
    page = (
        '{"page":1,"per_page":3,"total_entries":3,"total_pages":1,"members":['
        '{"member":{"id":1,"identifier":"a\\u0000b","notification_mode":"app","score":NaN}},'
        '{"member":{"id":99999999999999999999,"identifier":"huge"}},'
        '{"member":{"id":3,"identifier":"c","member_profile":{"first_name":"Z\\u0000oe"}}}]}'
    )
    sparkfly_sandbox.sandbox.inject_fault(api.MEMBERS_PATH, status=200, body=page)
    run = sync_resource("members", client=client_for(sparkfly_sandbox), per_page=3)
    assert (run.status, run.created, run.errors) == ("succeeded", 2, 1)
    assert "64-bit" in run.error_samples[0]
    first = Member.objects.get(sparkfly_id=1)
    assert first.identifier == "ab" and first.raw["score"] is None
    assert Member.objects.get(sparkfly_id=3).first_name == "Zoe"


def test_a_database_failure_mid_page_fails_the_run_without_moving_the_checkpoint(sparkfly_sandbox):
    """A real database error inside page 3's transaction (a trigger refuses one row)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "CREATE FUNCTION refuse_member() RETURNS trigger AS $$ BEGIN "
            "IF NEW.identifier = 'member-000025' THEN RAISE EXCEPTION 'disk full'; END IF; RETURN NEW; END $$ "
            "LANGUAGE plpgsql"
        )
        cursor.execute(
            "CREATE TRIGGER refuse_member BEFORE INSERT ON sparkfly_sync_member FOR EACH ROW EXECUTE FUNCTION refuse_member()"
        )
    run = sync_resource("members", client=client_for(sparkfly_sandbox), per_page=10)
    assert run.status == "failed" and "disk full" in run.failure
    run.refresh_from_db()
    assert run.checkpoint == {"stream": "all", "page": 2, "per_page": 10} and run.pages == 2 and run.created == 20
    assert Member.objects.count() == 20


def test_an_empty_page_before_the_last_fails_instead_of_ending_early(sparkfly_sandbox):
    sparkfly_sandbox.sandbox.inject_fault(
        api.MEMBERS_PATH, status=200, body='{"page":2,"per_page":10,"total_pages":5,"members":[]}', after=1
    )
    run = sync_resource("members", client=client_for(sparkfly_sandbox), per_page=10)
    assert run.status == "failed" and "page 2 of 5 came back empty" in run.failure


def test_a_redirect_is_not_followed(sparkfly_sandbox):
    sparkfly_sandbox.sandbox.inject_fault(api.MEMBERS_PATH, status=302, body="", times=5)
    run = sync_resource("members", client=client_for(sparkfly_sandbox), per_page=10)
    assert run.status == "failed" and "302" in run.failure and "not followed" in run.failure

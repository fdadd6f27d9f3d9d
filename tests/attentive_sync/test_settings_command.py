"""``manage.py attentive_settings`` on the real PostgreSQL: every option, the key from stdin
only, validation errors naming the option, --show masking, and --reencrypt after a rotation."""

from __future__ import annotations

import io
import logging
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection

from attentive_sync.models import AttentiveSettings

pytestmark = pytest.mark.django_db

KEY = "sk_live_UNIQUE123456"


def run(*args, stdin: str | None = None) -> str:
    out = io.StringIO()
    options = {"stdout": out, "stderr": out}
    if stdin is not None:
        options["stdin"] = io.StringIO(stdin)
    call_command("attentive_settings", *args, **options)
    return out.getvalue()


def raw_api_key() -> str | None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT api_key FROM attentive_sync_attentivesettings")
        return cursor.fetchone()[0]


def test_key_is_read_from_stdin_stripped_stored_encrypted_and_never_printed(caplog):
    caplog.set_level(logging.DEBUG)

    output = run("--api-key-stdin", "--show", stdin=KEY + "\n")

    assert AttentiveSettings.load().key == KEY
    stored = raw_api_key()
    assert KEY not in stored and "UNIQUE" not in stored
    assert "Saved API key: ••••3456." in output
    assert "API key: ••••3456" in output
    assert KEY not in output and "UNIQUE" not in output
    assert KEY not in caplog.text


@pytest.mark.parametrize("args", [["--api-key", KEY], [f"--api-key={KEY}"], [KEY]])
def test_a_key_given_as_an_argument_is_refused_without_repeating_it(args):
    with pytest.raises(CommandError, match="read from standard input only") as refused:
        call_command("attentive_settings", *args)

    assert "UNIQUE" not in str(refused.value)
    assert AttentiveSettings.load().key == ""


@pytest.mark.parametrize("stdin", ["", "\n", "   \n"])
def test_an_empty_key_is_refused_and_the_stored_one_kept(stdin):
    run("--api-key-stdin", stdin=KEY)

    with pytest.raises(CommandError, match="No API key on standard input: an empty key is refused"):
        run("--api-key-stdin", stdin=stdin)

    assert AttentiveSettings.load().key == KEY


def test_a_key_with_several_lines_is_refused():
    with pytest.raises(CommandError, match="contains spaces or several lines") as refused:
        run("--api-key-stdin", stdin=f"{KEY}\nsecond-line\n")

    assert KEY not in str(refused.value)
    assert AttentiveSettings.load().key == ""


def test_at_a_terminal_the_key_is_asked_for_without_echo(monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    prompts = []
    monkeypatch.setattr("getpass.getpass", lambda prompt: prompts.append(prompt) or KEY)

    call_command("attentive_settings", "--api-key-stdin", stdin=Terminal(), stdout=io.StringIO())

    assert prompts == ["Attentive API key: "]
    assert AttentiveSettings.load().key == KEY


def test_each_option_sets_its_field(settings):
    settings.ATTENTIVE_ALLOWED_HOSTS = ["attentive.example.com"]

    output = run(
        "--api-url", "https://attentive.example.com",
        "--sign-up-source-id", "12345",
        "--enable",
        "--rate-limit", "90",
        "--max-event-age-hours", "6.5",
    )

    stored = AttentiveSettings.load()
    assert stored.api_url == "https://attentive.example.com"
    assert stored.sign_up_source_id == "12345"
    assert stored.enabled is True
    assert stored.rate_limit_per_second == 90
    assert stored.max_event_age == timedelta(hours=6, minutes=30)
    assert output == (
        "Saved API base URL: https://attentive.example.com, sign-up source id: 12345, enabled: yes, "
        "rate limit per second: 90 requests/s, max event age: 6.5 h.\n"
    )


def test_a_new_url_needs_the_key_again_in_the_same_command(settings):
    settings.ATTENTIVE_ALLOWED_HOSTS = ["api.attentivemobile.com", "eu.attentive.example.com"]
    run("--api-key-stdin", stdin=KEY)

    with pytest.raises(CommandError) as refused:
        run("--api-url", "https://eu.attentive.example.com")
    unchanged = AttentiveSettings.load()
    run("--api-url", "https://eu.attentive.example.com", "--api-key-stdin", stdin="sk_live_EU987654")

    assert str(refused.value) == (
        "Nothing was saved. --api-url changes where the stored API key is sent: give the key again with "
        "--api-key-stdin in the same command."
    )
    assert (unchanged.api_url, unchanged.key) == ("https://api.attentivemobile.com", KEY)
    moved = AttentiveSettings.load()
    assert (moved.api_url, moved.key) == ("https://eu.attentive.example.com", "sk_live_EU987654")


def test_disable_and_clearing_the_sign_up_source_id():
    run("--enable", "--sign-up-source-id", "12345")

    run("--disable", "--sign-up-source-id", "")

    settings = AttentiveSettings.load()
    assert settings.enabled is False
    assert settings.sign_up_source_id == ""


def test_enable_and_disable_together_are_refused():
    with pytest.raises(CommandError, match="not allowed with argument"):
        run("--enable", "--disable")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--rate-limit", "0"], "--rate-limit (rate_limit_per_second): Ensure this value is greater than or equal to 1"),
        (["--rate-limit", "10001"], "--rate-limit (rate_limit_per_second): Ensure this value is less than or equal"),
        (["--max-event-age-hours", "12"], "--max-event-age-hours (max_event_age): The maximum event age must stay under"),
        (["--max-event-age-hours", "0"], "--max-event-age-hours (max_event_age): The maximum event age must be positive"),
        (["--api-url", "not a url"], "--api-url (api_url): Enter a valid URL."),
        (["--api-url", "https://attentive.example.com"],
         "--api-url (api_url): attentive.example.com is not an allowed Attentive host: the Attentive API key is "
         "sent only to api.attentivemobile.com"),
        (["--api-url", "http://api.attentivemobile.com"], "--api-url (api_url): The Attentive API URL must use https"),
    ],
)
def test_bad_values_are_refused_naming_the_option_and_nothing_is_saved(args, message):
    before = AttentiveSettings.load()

    with pytest.raises(CommandError) as refused:
        run(*args, "--enable")

    assert str(refused.value).startswith("Nothing was saved. ")
    assert message in str(refused.value)
    after = AttentiveSettings.load()
    assert (after.enabled, after.rate_limit_per_second, after.max_event_age, after.api_url) == (
        before.enabled, before.rate_limit_per_second, before.max_event_age, before.api_url,
    )


def test_a_key_too_long_is_refused_without_repeating_it():
    long_key = "k" * 501

    too_long = r"--api-key-stdin \(api_key\): Ensure this value has at most 500"
    with pytest.raises(CommandError, match=too_long) as refused:
        run("--api-key-stdin", stdin=long_key)

    assert long_key not in str(refused.value)
    assert refused.value.__cause__ is None and refused.value.__suppress_context__


def test_show_prints_every_setting_with_the_key_masked():
    run("--api-key-stdin", "--disable", stdin=KEY)
    AttentiveSettings.objects.filter(pk=1).update(disabled_event_types=["a.b", "c.d"])

    output = run("--show")

    assert output.splitlines() == [
        "API key: ••••3456",
        "API base URL: https://api.attentivemobile.com",
        "sign-up source id: (empty)",
        "enabled: no",
        "rate limit per second: 140 requests/s",
        "max event age: 8 h",
        "event types not forwarded: a.b, c.d",
        "sending: forwarding to Attentive is switched off",
    ]


def test_show_without_a_key():
    assert "API key: not set" in run("--show")


def test_nothing_to_do_is_an_error():
    with pytest.raises(CommandError, match="Nothing to do"):
        run()


def test_setting_other_fields_leaves_the_stored_ciphertext_alone():
    run("--api-key-stdin", stdin=KEY)
    stored = raw_api_key()

    run("--rate-limit", "50", "--enable")

    assert raw_api_key() == stored


def test_reencrypt_after_a_new_salt_is_put_first(salts):
    salts(["old-salt"])
    run("--api-key-stdin", stdin=KEY)
    under_old_salt = raw_api_key()
    salts(["new-salt"])
    assert AttentiveSettings.load().api_key_unreadable  # the new salt alone cannot read it yet

    salts(["new-salt", "old-salt"])
    output = run("--reencrypt")

    assert output == "Re-encrypted the API key with the current SECRET_KEY and first salt of FIELD_ENCRYPTION_SALTS.\n"
    assert raw_api_key() != under_old_salt
    salts(["new-salt"])  # the old salt retired
    assert AttentiveSettings.load().key == KEY


def test_reencrypt_after_a_new_secret_key_with_the_old_one_as_fallback(settings, salts):
    settings.SECRET_KEY, settings.SECRET_KEY_FALLBACKS = "old-secret", []
    salts(["salt"])
    run("--api-key-stdin", stdin=KEY)

    settings.SECRET_KEY, settings.SECRET_KEY_FALLBACKS = "new-secret", ["old-secret"]
    salts(["salt"])
    run("--reencrypt")

    settings.SECRET_KEY_FALLBACKS = []
    salts(["salt"])
    assert AttentiveSettings.load().key == KEY


def test_reencrypt_refuses_a_key_it_cannot_read_and_leaves_it_as_it_was(salts):
    salts(["old-salt"])
    run("--api-key-stdin", stdin=KEY)
    stored = raw_api_key()
    salts(["new-salt"])  # the old salt dropped without being kept

    with pytest.raises(CommandError, match="cannot be decrypted with the current SECRET_KEY"):
        run("--reencrypt")
    output = run("--show")

    assert raw_api_key() == stored
    assert "API key: stored, but it cannot be decrypted" in output
    salts(["old-salt"])  # putting the old salt back still recovers it
    assert AttentiveSettings.load().key == KEY


def test_reencrypt_without_a_key():
    with pytest.raises(CommandError, match="No API key is stored"):
        run("--reencrypt")

"""``python manage.py attentive_settings``: show and change the Attentive settings from a shell.

The API key is read from standard input only: an argument would be kept in the shell's
history and shown to every user by ``ps``. Nothing this command prints contains the key.
Values go through the model's validation, as in the admin, and only the fields given are
written: rewriting an unchanged key would encrypt one this deployment cannot decrypt a
second time, beyond recovery. A new --api-url needs the key again (--api-key-stdin), as in the admin.
"""

from __future__ import annotations

import getpass
import sys
from datetime import timedelta

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from attentive_sync.models import AttentiveSettings

# How each field is set here, to name the option in an error.
OPTION_OF_FIELD = {
    "api_key": "--api-key-stdin",
    "api_url": "--api-url",
    "sign_up_source_id": "--sign-up-source-id",
    "enabled": "--enable/--disable",
    "rate_limit_per_second": "--rate-limit",
    "max_event_age": "--max-event-age-hours",
}
KEY_FROM_STDIN = "The API key is read from standard input only: --api-key-stdin."
UNREADABLE = "cannot be decrypted with the current SECRET_KEY, SECRET_KEY_FALLBACKS and FIELD_ENCRYPTION_SALTS"


class Command(BaseCommand):
    help = "Show or change the Attentive settings (the API key only from standard input)."
    # Tests pass stdin=StringIO(...) through call_command, as Django's createsuperuser allows.
    stealth_options = ("stdin",)

    def create_parser(self, prog_name, subcommand, **kwargs):
        # No abbreviations: "--api-key KEY" must not pass for "--api-key-stdin" and a stray word.
        parser = super().create_parser(prog_name, subcommand, allow_abbrev=False, **kwargs)
        report = parser.error

        def error(message):
            # argparse repeats unrecognised arguments, and a key typed as one would be printed.
            if message.startswith("unrecognized arguments"):
                message = "unrecognized arguments (not repeated here: one may be a key). " + KEY_FROM_STDIN
            report(message)

        parser.error = error
        return parser

    def add_arguments(self, parser):
        parser.add_argument(
            "--api-key-stdin",
            action="store_true",
            help="Read the API key from standard input (pipe it in; at a terminal it is asked for without echo).",
        )
        parser.add_argument("--api-url", metavar="URL", help="Attentive's API base URL.")
        parser.add_argument("--sign-up-source-id", metavar="ID", help="The sign-up source id ('' to clear it).")
        switch = parser.add_mutually_exclusive_group()
        switch.add_argument("--enable", dest="enabled", action="store_const", const=True, help="Send events.")
        switch.add_argument(
            "--disable", dest="enabled", action="store_const", const=False, help="Hold events (still recorded)."
        )
        parser.add_argument("--rate-limit", type=int, metavar="N", help="Requests per second, shared by all workers.")
        parser.add_argument(
            "--max-event-age-hours", type=float, metavar="H", help="Send nothing older than this (under 12)."
        )
        parser.add_argument(
            "--reencrypt",
            action="store_true",
            help="Encrypt the stored key again with the current SECRET_KEY and first salt, after a rotation "
            "that kept the old ones in SECRET_KEY_FALLBACKS or later in FIELD_ENCRYPTION_SALTS.",
        )
        parser.add_argument("--show", action="store_true", help="Print the settings (the key masked).")

    def handle(self, *args, **options):
        settings = AttentiveSettings.load()
        changes = self._requested_changes(options)
        if not (changes or options["reencrypt"] or options["show"]):
            raise CommandError("Nothing to do: give a setting to change, --reencrypt or --show (see --help).")
        if changes:
            self._apply(settings, changes)
        if options["reencrypt"]:
            self._reencrypt(settings)
        if options["show"]:
            self._show(settings)

    def _requested_changes(self, options) -> dict:
        changes = {}
        if options["api_key_stdin"]:
            changes["api_key"] = self._read_key(options.get("stdin") or sys.stdin)
        for field, option in (
            ("api_url", "api_url"),
            ("sign_up_source_id", "sign_up_source_id"),
            ("enabled", "enabled"),
            ("rate_limit_per_second", "rate_limit"),
        ):
            if options[option] is not None:
                changes[field] = options[option]
        if options["max_event_age_hours"] is not None:
            changes["max_event_age"] = timedelta(hours=options["max_event_age_hours"])
        return changes

    def _read_key(self, stdin) -> str:
        key = getpass.getpass("Attentive API key: ") if stdin.isatty() else stdin.read()
        key = key.strip()  # the newline `echo` and editors end a file with
        if not key:
            raise CommandError("No API key on standard input: an empty key is refused (clear a key in the admin).")
        if any(character.isspace() for character in key):
            raise CommandError("The API key on standard input contains spaces or several lines: give the key alone.")
        return key

    def _apply(self, settings: AttentiveSettings, changes: dict) -> None:
        new_url = changes.get("api_url")
        if new_url and new_url.rstrip("/") != settings.api_url.rstrip("/") and settings.key and "api_key" not in changes:
            # As in the admin: the stored key goes to a new URL only when it is given again.
            raise CommandError(
                "Nothing was saved. --api-url changes where the stored API key is sent: give the key "
                "again with --api-key-stdin in the same command."
            )
        for field, value in changes.items():
            setattr(settings, field, value)
        untouched = [field.name for field in settings._meta.concrete_fields if field.name not in changes]
        try:
            settings.full_clean(exclude=untouched)
        except ValidationError as exc:
            raise CommandError(
                "Nothing was saved. "
                + " ".join(
                    f"{OPTION_OF_FIELD.get(field, field)} ({field}): {' '.join(problems)}"
                    for field, problems in exc.message_dict.items()
                )
            ) from None  # the chained error would repeat the values, the key among them
        settings.save(update_fields=[*changes, "updated_at"])
        self.stdout.write("Saved " + ", ".join(_describe(settings, field) for field in changes) + ".")

    def _reencrypt(self, settings: AttentiveSettings) -> None:
        if not settings.key:
            raise CommandError("No API key is stored: there is nothing to re-encrypt.")
        if settings.api_key_unreadable:
            raise CommandError(
                f"The stored API key {UNREADABLE}: put back the keys it was encrypted with (as fallbacks or "
                "later salts) and run this again, or set the key anew with --api-key-stdin."
            )
        # Saving encrypts with the first key (SECRET_KEY with the first salt); reading tried them all.
        settings.save(update_fields=["api_key", "updated_at"])
        self.stdout.write(
            "Re-encrypted the API key with the current SECRET_KEY and first salt of FIELD_ENCRYPTION_SALTS."
        )

    def _show(self, settings: AttentiveSettings) -> None:
        for field in OPTION_OF_FIELD:
            self.stdout.write(_describe(settings, field))
        disabled = ", ".join(settings.disabled_event_types) or "none"
        self.stdout.write(f"event types not forwarded: {disabled}")
        self.stdout.write(f"sending: {settings.sending_blocker() or 'going ahead'}")


def _describe(settings: AttentiveSettings, field: str) -> str:
    label = settings._meta.get_field(field).verbose_name
    if field == "api_key":
        if settings.api_key_unreadable:
            return f"{label}: stored, but it {UNREADABLE}"
        return f"{label}: {settings.masked_api_key or 'not set'}"
    value = getattr(settings, field)
    if field == "enabled":
        value = "yes" if value else "no"
    elif field == "rate_limit_per_second":
        value = f"{value} requests/s"
    elif field == "max_event_age":
        value = f"{value.total_seconds() / 3600:g} h"
    return f"{label}: {value if value != '' else '(empty)'}"

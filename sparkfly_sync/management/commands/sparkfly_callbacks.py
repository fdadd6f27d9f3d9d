"""``python manage.py sparkfly_callbacks``: what Sparkfly should call, and telling it so.

Lists every mirrored channel with its conversion callback template (creating the missing
endpoints) and whether Sparkfly has it, then the event notification endpoint. ``--apply``
sets the templates at Sparkfly and registers the notification callback and subscriptions.

A template holds its endpoint's secret (Sparkfly signs nothing it sends there: the URL is the
credential), so it is printed masked unless --show-secrets is given; nothing else this
command prints, and nothing it logs, contains a secret or a signing key.
"""

from __future__ import annotations

from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from sparkfly_sync import callbacks
from sparkfly_sync.client import client_from_settings
from sparkfly_sync.errors import SparkflyError
from sparkfly_sync.models import NotificationEndpoint, is_unreadable

UNREADABLE = "cannot be decrypted with the current SECRET_KEY, SECRET_KEY_FALLBACKS and FIELD_ENCRYPTION_SALTS"


class Command(BaseCommand):
    help = (
        "List each channel's conversion callback URL (secrets masked) and whether Sparkfly has it; "
        "--apply sets them at Sparkfly and registers the event notifications."
    )

    def create_parser(self, prog_name, subcommand, **kwargs):
        # No abbreviations: "--show" (as attentive_settings has) must not print the secrets.
        return super().create_parser(prog_name, subcommand, allow_abbrev=False, **kwargs)

    def add_arguments(self, parser):
        parser.add_argument(
            "--channel", dest="channels", type=int, action="append", metavar="ID", default=[],
            help="Only this channel (its Sparkfly id); repeat for several.",
        )
        parser.add_argument(
            "--conv-id", dest="conv_ids", action="append", metavar="KEY", default=None,
            help="A key of the credentials' annotations['conv_ids'] the URL asks Sparkfly for; repeat for several. "
            "Replaces the selected channels' keys (apply again afterwards).",
        )
        parser.add_argument(
            "--rotate", action="store_true",
            help="Give the selected channels' endpoints a new secret; the previous one keeps working for "
            "SPARKFLY_CALLBACK_SECRET_GRACE_HOURS, until Sparkfly has the new URL (use with --apply).",
        )
        parser.add_argument(
            "--apply", action="store_true",
            help="Set each selected channel's conversion callback at Sparkfly, and register the event "
            "notification callback and its subscriptions.",
        )
        parser.add_argument(
            "--reencrypt", action="store_true",
            help="Encrypt every endpoint's secrets again with the current SECRET_KEY and first salt, after a "
            "rotation that kept the old ones in SECRET_KEY_FALLBACKS or later in FIELD_ENCRYPTION_SALTS.",
        )
        parser.add_argument(
            "--show-secrets", action="store_true",
            help="Print the full URLs, secrets included (they are credentials: keep them out of tickets and chats).",
        )

    def handle(self, *args, channels, conv_ids, rotate, apply, reencrypt, show_secrets, **options):
        # Before anything changes: a rotation that cannot then be applied only starts a countdown.
        client = self._client() if apply else None
        if reencrypt:
            self._reencrypt()
        endpoints = self._selected(callbacks.ensure_conversion_endpoints(), channels)
        if conv_ids is not None:
            try:
                callbacks.set_conv_id_keys(endpoints=endpoints, keys=conv_ids)
            except ValueError as exc:
                raise CommandError(str(exc)) from None
            self.stdout.write(f"conv_ids keys of {_channels(endpoints)}: {', '.join(conv_ids) or 'none'}.")
        if rotate:
            for endpoint in endpoints:
                callbacks.rotate_conversion_secret(endpoint)
                endpoint.refresh_from_db()
            if endpoints:
                later = "" if apply else " Sparkfly still calls the previous URLs: run with --apply before then."
                self.stdout.write(
                    f"Rotated the secrets of {_channels(endpoints)}; the previous ones are accepted until "
                    f"{_when(endpoints[0].previous_secret_expires_at)}.{later}"
                )
        failures = self._apply(client, endpoints) if apply else []
        self._list(endpoints, show_secrets=show_secrets)
        if failures:
            raise CommandError(
                f"{len(failures)} of the changes at Sparkfly failed:\n  " + "\n  ".join(failures)
                + "\nThe others were made; fix the cause and run --apply again (it is safe to repeat)."
            )

    def _client(self):
        try:
            callbacks.check_public_url()
            return client_from_settings()
        except callbacks.UnreachableURL as exc:
            raise CommandError(str(exc)) from None
        except ImproperlyConfigured as exc:
            raise CommandError(f"--apply talks to the Sparkfly API. {exc}") from None

    def _reencrypt(self) -> None:
        try:
            count = callbacks.reencrypt_secrets()
        except callbacks.SecretsUnreadable as exc:
            raise CommandError(
                f"Nothing was re-encrypted: the secrets of {', '.join(exc.endpoints)} {UNREADABLE}. Put back the "
                "keys they were encrypted with (as fallbacks or later salts) and run this again, or rotate them "
                "(--rotate --apply; a notification endpoint's signing key comes back with --apply)."
            ) from None
        self.stdout.write(
            f"Re-encrypted the secrets of {count} endpoint{'s' if count != 1 else ''} with the current "
            "SECRET_KEY and first salt of FIELD_ENCRYPTION_SALTS."
        )

    @staticmethod
    def _selected(endpoints, channel_ids: list[int]):
        if not channel_ids:
            return endpoints
        by_channel = {endpoint.channel_id: endpoint for endpoint in endpoints}
        unknown = [str(channel_id) for channel_id in channel_ids if channel_id not in by_channel]
        if unknown:
            raise CommandError(
                f"No mirrored channel with Sparkfly id {', '.join(unknown)}: run `manage.py sync_sparkfly channels` "
                "first, or check the id."
            )
        return [by_channel[channel_id] for channel_id in dict.fromkeys(channel_ids)]

    def _apply(self, client, endpoints) -> list[str]:
        failures = []
        for endpoint in endpoints:
            label = _label(endpoint.channel)
            try:
                channel = callbacks.apply_conversion_callback(endpoint=endpoint, client=client)
            except SparkflyError as exc:
                failures.append(f"{label}: {exc}")
                self.stderr.write(self.style.ERROR(f"{label}: not set: {exc}"))
                continue
            endpoint.channel = channel
            self.stdout.write(self.style.SUCCESS(f"{label}: conversion callback set at Sparkfly."))
        try:
            endpoint = callbacks.register_notifications(client=client)
        except SparkflyError as exc:
            failures.append(f"event notifications: {exc}")
            self.stderr.write(self.style.ERROR(f"Event notifications: not registered: {exc}"))
        else:
            self.stdout.write(
                self.style.SUCCESS(
                    f"Event notifications: registered as Sparkfly callback {endpoint.sparkfly_callback_id}, "
                    f"subscribed to {', '.join(endpoint.events)}."
                )
            )
        return failures

    def _list(self, endpoints, *, show_secrets: bool) -> None:
        if show_secrets:
            self.stdout.write(
                self.style.WARNING(
                    "These URLs contain their endpoints' secrets: anyone holding one can post redemptions. "
                    "Give them to Sparkfly only."
                )
            )
        self.stdout.write("Conversion callbacks:")
        if not endpoints:
            self.stdout.write("  no channel is mirrored yet: run `manage.py sync_sparkfly channels` first.")
        for endpoint in endpoints:
            status = callbacks.callback_status(endpoint, endpoint.channel)
            notes = [callbacks.STATUS_WORDS[status]]
            if status == callbacks.PREVIOUS_SECRET:
                notes.append(f"(accepted until {_when(endpoint.previous_secret_expires_at)})")
            if not endpoint.is_enabled:
                notes.append("(endpoint switched off: answers 410)")
            self.stdout.write(f"  {_label(endpoint.channel)}: Sparkfly has it: {' '.join(notes)}")
            self.stdout.write(f"    {callbacks.conversion_callback_template(endpoint, masked=not show_secrets)}")
            if is_unreadable(endpoint.secret):
                self.stdout.write(
                    f"    its secret {UNREADABLE}, so its callbacks are refused: put those keys back, "
                    "or --rotate --apply"
                )
        self.stdout.write("Event notifications:")
        notification_endpoints = list(NotificationEndpoint.objects.order_by("external_id"))
        if not notification_endpoints:
            self.stdout.write("  none registered yet: run with --apply.")
        for endpoint in notification_endpoints:
            self.stdout.write(f"  {endpoint.external_id}: {callbacks.notification_url(endpoint)}")
            self.stdout.write(f"    Sparkfly callback id: {endpoint.sparkfly_callback_id or 'none yet'}")
            self.stdout.write(f"    subscribed events: {', '.join(endpoint.events) or 'none'}")
            self.stdout.write(f"    signing key: {_key_held(endpoint)}")
            if not endpoint.is_enabled:
                self.stdout.write("    switched off: answers 410")


def _label(channel) -> str:
    return f"channel {channel.sparkfly_id} “{channel.name}”" if channel.name else f"channel {channel.sparkfly_id}"


def _channels(endpoints) -> str:
    if not endpoints:
        return "no channel"
    return f"channel{'s' if len(endpoints) > 1 else ''} {', '.join(str(e.channel_id) for e in endpoints)}"


def _when(moment) -> str:
    return timezone.localtime(moment).strftime("%Y-%m-%d %H:%M %Z") if moment else "-"


def _key_held(endpoint: NotificationEndpoint) -> str:
    if not endpoint.secret:
        return "none held (run with --apply, or paste it in the admin)"
    if is_unreadable(endpoint.secret):
        return f"held, but it {UNREADABLE}: run with --apply to fetch it again"
    return "held"

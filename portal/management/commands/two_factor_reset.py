"""``python manage.py two_factor_reset USERNAME``: forget a person's authenticator (a lost phone).

They then log in to the portal with their password and enroll again on its Two-factor page; while
REQUIRE_STAFF_2FA is on they cannot reach the admin until they have."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from portal.two_factor import reset_devices


class Command(BaseCommand):
    help = "Remove a user's two-factor devices, so they can enroll a new authenticator."

    def add_arguments(self, parser):
        parser.add_argument("username")

    def handle(self, *args, username, **options):
        user = get_user_model().objects.filter(username=username).first()
        if user is None:
            raise CommandError(f"No user {username!r}.")
        count = reset_devices(user=user)
        self.stdout.write(f"Removed {count} two-factor device{'s' if count != 1 else ''} of {username}.")

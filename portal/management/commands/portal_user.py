"""Give a person one of the portal's roles: ``manage.py portal_user alice --role program-manager``.

Creates the account when it does not exist yet (``--email`` then required) with a random
password nobody is shown: its owner sets their own with "Forgotten your password?" on the login
page, so no password ever passes through a terminal or a chat. (Not an "unusable" password:
Django's password reset ignores such accounts, as it should for accounts that log in elsewhere.)
"""

from __future__ import annotations

import secrets

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.core.validators import validate_email

from portal.roles import ROLES, user_assign_role


class Command(BaseCommand):
    help = "Create or update a portal account and give it a role (program-manager or administrator)."

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument("--role", required=True, choices=sorted(ROLES))
        parser.add_argument("--email", default="", help="required for a new account (password reset goes there)")

    def handle(self, *args, username: str, role: str, email: str, **options):
        User = get_user_model()
        if email:
            try:
                validate_email(email)
            except ValidationError:
                raise CommandError(f"--email {email!r} is not a valid email address") from None
        user = User.objects.filter(username=username).first()
        if user is None:
            if not email:
                raise CommandError(f"there is no account {username!r}; give --email to create it")
            user = User(username=username, email=email)
            user.set_password(secrets.token_urlsafe(32))
            user.save()
            self.stdout.write(f"Created {username}; they set a password with \"Forgotten your password?\" on the login page.")
        elif email and user.email != email:
            user.email = email
            user.save(update_fields=["email"])
        user_assign_role(user=user, role=role)
        self.stdout.write(f"{username} is now in the role {ROLES[role]!r}.")

"""Signed-in clients of the portal's pages, one per role (and one with no role at all)."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from django.test import Client

from portal.roles import user_assign_role


def _signed_in(username: str, role: str | None) -> Client:
    """A client of its own, so one test may hold several roles at once."""
    client = Client()
    user = User.objects.create_user(username, f"{username}@example.com", "not-a-real-password")
    if role:
        user_assign_role(user=user, role=role)
    client.force_login(user)
    client.user = user
    return client


@pytest.fixture
def program_manager_client(db):
    return _signed_in("pat-manager", "program-manager")


@pytest.fixture
def administrator_client(db):
    return _signed_in("ada-admin", "administrator")


@pytest.fixture
def no_role_client(db):
    return _signed_in("nora-norole", None)

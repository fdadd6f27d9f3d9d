"""The two roles: groups created by migration, permissions kept current, assigned by command."""

import pytest
from django.contrib.auth.models import Group, User
from django.core.management import CommandError, call_command

from portal.roles import ADMINISTRATORS, PROGRAM_MANAGERS, sync_role_permissions


@pytest.mark.django_db
def test_program_managers_may_read_everything_and_change_nothing():
    codenames = set(Group.objects.get(name=PROGRAM_MANAGERS).permissions.values_list("codename", flat=True))
    assert {"view_portal", "export_redemptions", "view_member", "view_delivery", "view_redemption"} <= codenames
    assert not [c for c in codenames if c.startswith(("change_", "add_", "delete_"))]
    assert "issue_credentials" not in codenames


@pytest.mark.django_db
def test_administrators_hold_every_permission_of_the_portals_apps():
    codenames = set(Group.objects.get(name=ADMINISTRATORS).permissions.values_list("codename", flat=True))
    assert {"change_delivery", "change_attentivesettings", "issue_credentials", "view_portal", "change_user"} <= codenames


@pytest.mark.django_db
def test_syncing_again_restores_a_permission_removed_by_hand():
    group = Group.objects.get(name=PROGRAM_MANAGERS)
    group.permissions.remove(*group.permissions.filter(codename="view_portal"))
    sync_role_permissions()
    assert group.permissions.filter(codename="view_portal").exists()


@pytest.mark.django_db
def test_portal_user_creates_an_account_without_password_in_one_role():
    call_command("portal_user", "pat", "--role", "program-manager", "--email", "pat@example.com")
    pat = User.objects.get(username="pat")
    assert pat.is_staff and not pat.has_usable_password()
    assert list(pat.groups.values_list("name", flat=True)) == [PROGRAM_MANAGERS]
    assert pat.has_perm("portal.view_portal") and not pat.has_perm("attentive_sync.change_delivery")

    call_command("portal_user", "pat", "--role", "administrator")
    pat = User.objects.get(username="pat")
    assert list(pat.groups.values_list("name", flat=True)) == [ADMINISTRATORS]
    assert pat.has_perm("attentive_sync.change_delivery")


@pytest.mark.django_db
def test_portal_user_refuses_a_new_account_without_email():
    with pytest.raises(CommandError, match="give --email"):
        call_command("portal_user", "nobody", "--role", "administrator")

"""The two roles: groups created by migration, permissions kept current, assigned by command."""

import re

import pytest
from django.contrib.auth.models import Group, User
from django.core import mail
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
def test_portal_user_creates_a_staff_account_in_one_role_and_moves_it_to_another():
    call_command("portal_user", "pat", "--role", "program-manager", "--email", "pat@example.com")
    pat = User.objects.get(username="pat")
    assert pat.is_staff
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


@pytest.mark.django_db
def test_a_new_account_sets_its_password_through_the_reset_mail_and_logs_in(client):
    call_command("portal_user", "pat", "--role", "program-manager", "--email", "pat@example.com")

    client.post("/accounts/password-reset/", {"email": "pat@example.com"})
    assert len(mail.outbox) == 1
    link = re.search(r"https?://[^/\s]+(/accounts/reset/\S+/)", mail.outbox[0].body).group(1)
    form_url = client.get(link, follow=True).redirect_chain[-1][0]
    client.post(form_url, {"new_password1": "a new Passw0rd!", "new_password2": "a new Passw0rd!"})

    assert client.login(username="pat", password="a new Passw0rd!")
    assert client.get("/").status_code == 200

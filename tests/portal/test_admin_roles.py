"""Roles in the admin: program managers read every page and can do nothing; administrators
can. Checked against every registered model admin, so a new one is covered without a new test."""

import pytest
from django.contrib import admin
from django.contrib.auth.models import User
from django.test import RequestFactory
from django.urls import reverse

from portal.roles import user_assign_role

REGISTERED = sorted(admin.site._registry.items(), key=lambda item: item[0]._meta.label)
# Accounts and login records (auth, axes, otp devices) are administrators' business only.
ADMINISTRATORS_ONLY = ("auth", "axes", "otp_totp", "otp_static")
APP_MODELS = [(model, model_admin) for model, model_admin in REGISTERED if model._meta.app_label not in ADMINISTRATORS_ONLY]
PRIVATE_MODELS = [(model, model_admin) for model, model_admin in REGISTERED if model._meta.app_label in ADMINISTRATORS_ONLY]


def _user(role):
    user = User.objects.create_user(role, f"{role}@example.com", "pw")
    user_assign_role(user=user, role=role)
    return User.objects.get(pk=user.pk)  # a fresh instance: permissions are cached per instance


def _request(user):
    request = RequestFactory().get("/admin/")
    request.user = user
    return request


@pytest.mark.django_db
@pytest.mark.parametrize("model, model_admin", APP_MODELS, ids=[m._meta.label for m, _ in APP_MODELS])
def test_a_program_manager_sees_every_list_and_may_change_nothing(client, model, model_admin):
    manager = _user("program-manager")
    request = _request(manager)
    assert model_admin.has_view_permission(request)
    assert not model_admin.has_add_permission(request)
    assert not model_admin.has_change_permission(request)
    assert not model_admin.has_delete_permission(request)
    assert list(model_admin.get_actions(request)) == []

    client.force_login(manager)
    changelist = reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_changelist")
    assert client.get(changelist, follow=True).status_code == 200


@pytest.mark.django_db
@pytest.mark.parametrize("model, model_admin", REGISTERED, ids=[m._meta.label for m, _ in REGISTERED])
def test_an_administrator_opens_every_list(client, model, model_admin):
    client.force_login(_user("administrator"))
    changelist = reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_changelist")
    assert client.get(changelist, follow=True).status_code == 200


@pytest.mark.django_db
@pytest.mark.parametrize("model, model_admin", PRIVATE_MODELS, ids=[m._meta.label for m, _ in PRIVATE_MODELS])
def test_a_program_manager_cannot_see_accounts_or_login_records(client, model, model_admin):
    client.force_login(_user("program-manager"))
    changelist = reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_changelist")
    assert client.get(changelist).status_code == 403


@pytest.mark.django_db
def test_a_program_manager_cannot_add_accounts(client):
    client.force_login(_user("program-manager"))
    assert client.get(reverse("admin:auth_user_add")).status_code == 403


@pytest.mark.django_db
@pytest.mark.parametrize("role, status_after", [("program-manager", "todo"), ("administrator", "cancelled")])
def test_only_an_administrator_may_cancel_a_job(client, role, status_after):
    from procrastinate.contrib.django.models import ProcrastinateJob

    from portal.tasks import retry_stalled_jobs

    job_id = retry_stalled_jobs.defer(timestamp=0)
    client.force_login(_user(role))
    client.post(
        reverse("admin:procrastinate_procrastinatejob_changelist"),
        {"action": "cancel", "_selected_action": [job_id]},
    )
    assert ProcrastinateJob.objects.get(pk=job_id).status == status_after

"""Accounts pages: password reset by email, end to end, in the portal's look."""

import re

import pytest
from django.contrib.auth.models import User
from django.core import mail


@pytest.mark.django_db
def test_a_forgotten_password_is_reset_through_the_emailed_link(client):
    User.objects.create_user("pat", "pat@example.com", "old password 123")

    response = client.post("/accounts/password-reset/", {"email": "pat@example.com"})
    assert response.status_code == 302 and response.url == "/accounts/password-reset/sent/"
    assert len(mail.outbox) == 1 and mail.outbox[0].to == ["pat@example.com"]
    link = re.search(r"https?://[^/\s]+(/accounts/reset/\S+/)", mail.outbox[0].body).group(1)

    form = client.get(link, follow=True)
    assert b"Choose a new password" in form.content
    done = client.post(form.redirect_chain[-1][0], {"new_password1": "a new Passw0rd!", "new_password2": "a new Passw0rd!"})
    assert done.status_code == 302 and done.url == "/accounts/reset/done/"
    assert client.login(username="pat", password="a new Passw0rd!")

    used_again = client.get(link, follow=True)
    assert b"This link is not valid any more" in used_again.content


@pytest.mark.django_db
def test_an_unknown_email_gets_the_same_answer_and_no_mail(client):
    response = client.post("/accounts/password-reset/", {"email": "nobody@example.com"})
    assert response.status_code == 302 and response.url == "/accounts/password-reset/sent/"
    assert mail.outbox == []


@pytest.mark.django_db
def test_logging_out_takes_a_post_and_ends_the_session(client):
    user = User.objects.create_user("pat", "pat@example.com", "pw")
    client.force_login(user)
    assert client.get("/accounts/logout/").status_code == 405
    response = client.post("/accounts/logout/")
    assert response.status_code == 302 and response.url == "/accounts/login/"
    assert "_auth_user_id" not in client.session

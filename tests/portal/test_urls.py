"""The portal's own URLs: anonymous visitors are sent to log in, never shown a page."""

import pytest

PAGES = ["/", "/members/", "/members/1/", "/offers/", "/offers/1/", "/deliveries/", "/redemptions/export.csv"]


@pytest.mark.django_db
@pytest.mark.parametrize("path", PAGES)
def test_an_anonymous_visitor_is_sent_to_the_login_page(client, path):
    response = client.get(path)
    assert response.status_code == 302
    assert response.url.startswith("/accounts/login/?next=")


@pytest.mark.django_db
def test_the_login_page_is_in_the_portals_look(client):
    response = client.get("/accounts/login/")
    assert response.status_code == 200
    assert b"pico.min.css" in response.content and b"Forgotten your password?" in response.content

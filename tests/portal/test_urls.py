"""The portal's own URLs."""

import pytest


@pytest.mark.django_db
def test_the_front_door_leads_to_the_admin_until_the_portal_pages_exist(client):
    response = client.get("/")
    assert response.status_code == 302 and response.url == "/admin/"

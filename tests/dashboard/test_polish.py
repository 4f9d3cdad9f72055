"""Polish an operator notices: names spelled right in the admin, records nobody may forge by hand, a favicon."""

from __future__ import annotations

from typing import Any

import pytest
from django.apps import apps
from django.contrib.staticfiles import finders
from django.test import Client

pytestmark = pytest.mark.django_db


@pytest.fixture
def superuser_client(django_user_model: Any) -> Client:
    client = Client()
    client.force_login(django_user_model.objects.create_superuser("root", "root@example.com", "pw-not-used"))
    return client


def test_the_admin_spells_its_names_right(superuser_client: Client) -> None:
    index = superuser_client.get("/admin/").content.decode()
    assert "Aliases" in index and "Aliass" not in index and "Bridge stats" in index
    # Django's default plural adds an "s": for a name ending in s it needs saying.
    doubled = [
        m._meta.verbose_name_plural
        for m in apps.get_models()
        if str(m._meta.verbose_name).endswith("s") and m._meta.verbose_name_plural == f"{m._meta.verbose_name}s"
    ]
    assert doubled == []


@pytest.mark.parametrize("model", ["telemetry/alert", "core/auditlog"])
def test_alerts_and_the_audit_log_cannot_be_added_by_hand(superuser_client: Client, model: str) -> None:
    assert superuser_client.get(f"/admin/{model}/add/").status_code == 403
    changelist = superuser_client.get(f"/admin/{model}/")
    assert changelist.status_code == 200 and f'href="/admin/{model}/add/"' not in changelist.content.decode()


def test_every_page_names_the_projects_own_favicon(admin_client: Client) -> None:
    body = admin_client.get("/").content.decode()
    assert '<link rel="icon" href="/static/favicon.svg" type="image/svg+xml">' in body
    found = finders.find("favicon.svg")
    assert found and open(found).read().startswith("<svg")


@pytest.mark.django_db
def test_the_menu_offers_admins_pages_to_admins_only_and_a_refusal_is_a_page_that_says_why(
    client: Client, admin_user: Any, viewer_user: Any
) -> None:
    client.force_login(viewer_user)
    menu = client.get("/").content.decode()
    refused = client.get("/tokens/")

    assert 'href="/tokens/"' not in menu and 'href="/users/"' not in menu and 'href="/audit/"' in menu
    assert refused.status_code == 403
    assert 'data-testid="forbidden"' in refused.content.decode() and "victor (viewer)" in refused.content.decode()
    client.force_login(admin_user)
    menu = client.get("/").content.decode()
    assert 'href="/tokens/"' in menu and 'href="/users/"' in menu

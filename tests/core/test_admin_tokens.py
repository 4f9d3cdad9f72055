"""The admin issues usable API tokens through the service, shows the secret once, and audits revocations."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from rest_framework.test import APIClient

from core import services, tokens
from core.models import ApiToken, AuditLog

pytestmark = pytest.mark.django_db

ADD_URL = "/admin/core/apitoken/add/"
LIST_URL = "/admin/core/apitoken/"


@pytest.fixture
def root() -> Any:
    return get_user_model().objects.create_superuser("root", password="pw-root-12345")


@pytest.fixture
def browser(root: Any) -> Client:
    client = Client()
    client.force_login(root)
    return client


def add(browser: Client, root: Any, **form: Any) -> Any:
    return browser.post(ADD_URL, {"name": "vision CI", "user": root.pk, "scopes": ["publish"], **form})


def test_add_creates_a_usable_token_and_shows_its_secret_once(browser: Client, root: Any) -> None:
    response = add(browser, root)
    assert response.status_code == 200, response.content
    token = ApiToken.objects.get()
    page = response.content.decode()
    secret = page.split('data-testid="api-token-secret">')[1].split("<")[0]
    assert secret.startswith("eft_") and token.key_hash == tokens.digest(secret) and token.key_hash
    assert "no-store" in response["Cache-Control"]
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    assert client.get("/api/v1/models/").status_code == 200
    # Nowhere else: not in the list, the change page, or a message left for the next page.
    for url in (LIST_URL, f"{LIST_URL}{token.pk}/change/"):
        shown = browser.get(url).content.decode()
        assert secret not in shown and token.key_hash not in shown


def test_adding_is_audited_with_the_admin_as_actor(browser: Client, root: Any) -> None:
    add(browser, root, expires_at_0="2099-01-31", expires_at_1="00:00:00")
    token = ApiToken.objects.get()
    entry = AuditLog.objects.get(action="api_token.issue")
    assert entry.actor == root and entry.data["prefix"] == token.prefix and entry.data["scopes"] == ["publish"]
    assert entry.data["expires_at"] == token.expires_at.isoformat()  # type: ignore[union-attr]


def test_add_refuses_unknown_input_and_the_admin_scope_for_a_user_who_is_not_staff(
    browser: Client, root: Any, viewer_user: Any
) -> None:
    assert add(browser, root, scopes=[]).status_code == 200
    response = add(browser, viewer_user, scopes=["admin"])
    assert "is a viewer: their tokens may have only read" in response.content.decode()
    assert not ApiToken.objects.exists() and not AuditLog.objects.exists()


def test_the_hash_is_never_a_form_field_and_the_prefix_is_read_only(browser: Client, root: Any) -> None:
    form = browser.get(ADD_URL).content.decode()
    assert 'name="key_hash"' not in form and 'name="prefix"' not in form
    token, _ = services.issue_token(actor=root, user=root, name="ci", scopes=["publish"])
    change = browser.get(f"{LIST_URL}{token.pk}/change/").content.decode()
    assert token.prefix in change
    assert 'name="prefix"' not in change and 'name="key_hash"' not in change and 'name="scopes"' not in change


def test_the_revoke_action_goes_through_the_service_and_is_audited(browser: Client, root: Any) -> None:
    token, secret = services.issue_token(actor=root, user=root, name="ci", scopes=["publish"])
    response = browser.post(LIST_URL, {"action": "revoke", "_selected_action": [token.pk]}, follow=True)
    assert response.status_code == 200
    token.refresh_from_db()
    assert token.revoked_at is not None
    entry = AuditLog.objects.get(action="api_token.revoke")
    assert entry.actor == root and "root" in entry.reason and entry.data["prefix"] == token.prefix
    assert token.prefix in browser.get(f"{LIST_URL}?revoked_at__isempty=0").content.decode()
    assert token.prefix not in browser.get(f"{LIST_URL}?revoked_at__isempty=1").content.decode()
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    assert client.get("/api/v1/models/").status_code == 401


def test_tokens_are_revoked_not_deleted(browser: Client, root: Any) -> None:
    token, _ = services.issue_token(actor=root, user=root, name="ci", scopes=["publish"])
    assert browser.get(f"{LIST_URL}{token.pk}/delete/").status_code == 403
    assert ApiToken.objects.filter(pk=token.pk).exists()


def test_the_audit_log_cannot_be_added_changed_or_deleted_by_hand(browser: Client, root: Any) -> None:
    services.issue_token(actor=root, user=root, name="ci", scopes=["publish"])
    entry = AuditLog.objects.get()
    assert browser.get("/admin/core/auditlog/add/").status_code == 403
    assert browser.get(f"/admin/core/auditlog/{entry.pk}/delete/").status_code == 403
    browser.post(f"/admin/core/auditlog/{entry.pk}/change/", {"reason": "edited", "action": "x"})
    entry.refresh_from_db()
    assert entry.reason == "" and entry.action == "api_token.issue"
    assert browser.get("/admin/core/auditlog/").status_code == 200

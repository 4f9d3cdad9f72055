"""``/api/v1/tokens/``: admins list, create (the secret in that answer only) and revoke API tokens."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.utils import timezone
from rest_framework.test import APIClient

from core import services, tokens
from core.models import ApiToken, AuditLog

pytestmark = pytest.mark.django_db

SHAPE = {"code", "detail", "fields"}


def refusal(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.content
    body = json.loads(response.content)
    assert set(body) <= SHAPE and {"code", "detail"} <= set(body), body
    assert body["code"] == code, body
    return body


def bearer(secret: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    return client


def create(client: APIClient, **body: Any) -> Any:
    return client.post("/api/v1/tokens/", {"name": "vision CI", "scopes": ["publish"], **body}, format="json")


def test_an_admin_creates_a_token_and_sees_its_secret_once(admin_client: APIClient, admin_user: Any) -> None:
    response = create(admin_client, expires_in_days=30)
    assert response.status_code == 201, response.content
    body = response.json()
    secret = body["token"]
    token = ApiToken.objects.get()
    assert token.key_hash == tokens.digest(secret) and body["prefix"] == secret[:10] == token.prefix
    assert body["user"] == "alice" and body["scopes"] == ["publish"] and body["expires_at"]
    assert "key_hash" not in body
    listed = admin_client.get("/api/v1/tokens/").content.decode()
    again = admin_client.get(f"/api/v1/tokens/{token.pk}/").content.decode()
    for page in (listed, again):
        assert secret not in page and token.key_hash not in page and token.prefix in page


def test_the_created_token_publishes_and_nothing_more(admin_client: APIClient) -> None:
    secret = create(admin_client).json()["token"]
    client = bearer(secret)
    assert client.get("/api/v1/models/").status_code == 200
    # Past the scope check: the publish endpoint itself reads the (missing) upload.
    publish = client.post("/api/v1/models/parts/versions/", {}, format="multipart")
    assert publish.status_code == 400 and publish.json()["code"] != "permission_denied", publish.content
    refusal(client.post("/api/v1/sites/", {"slug": "x", "name": "X"}, format="json"), 403, "permission_denied")
    refusal(client.get("/api/v1/tokens/"), 403, "permission_denied")


def test_an_admin_creates_a_token_for_another_user(admin_client: APIClient, viewer_user: Any) -> None:
    response = create(admin_client, user="victor", scopes=["read"])
    assert response.status_code == 201, response.content
    assert ApiToken.objects.get().user == viewer_user


def test_creating_is_audited_with_who_what_prefix_scopes_and_expiry(admin_client: APIClient) -> None:
    body = create(admin_client, scopes=["rollout", "publish"], expires_at="2099-01-01T00:00:00Z").json()
    entry = AuditLog.objects.get(action="api_token.issue")
    assert entry.actor_label == "alice" and entry.target_id == str(body["id"])
    assert entry.data == {
        "prefix": body["prefix"],
        "name": "vision CI",
        "user": "alice",
        "scopes": ["publish", "rollout"],
        "expires_at": "2099-01-01T00:00:00+00:00",
    }


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"scopes": ["everything"]}, "scopes.0"),
        ({"scopes": []}, "scopes"),
        ({"expires_at": "2001-01-01T00:00:00Z"}, "expires_at"),
        ({"expires_at": "2099-01-01T00:00:00Z", "expires_in_days": 3}, "expires_in_days"),
        ({"user": "nobody"}, "user"),
        ({"user": "victor", "scopes": ["admin"]}, "scopes"),
    ],
)
def test_a_bad_request_is_refused_by_field(
    admin_client: APIClient, viewer_user: Any, body: dict[str, Any], field: str
) -> None:
    answer = refusal(create(admin_client, **body), 400, "invalid")
    assert field in answer["fields"], answer
    assert not ApiToken.objects.exists() and not AuditLog.objects.exists()


def test_a_user_who_is_not_staff_is_refused(viewer_client: APIClient, admin_user: Any) -> None:
    services.issue_token(actor=None, user=admin_user, name="ci", scopes=["publish"])
    token = ApiToken.objects.get()
    refusal(viewer_client.get("/api/v1/tokens/"), 403, "permission_denied")
    refusal(create(viewer_client), 403, "permission_denied")
    refusal(viewer_client.post(f"/api/v1/tokens/{token.pk}/revoke/", {"reason": "x"}), 403, "permission_denied")
    assert ApiToken.objects.count() == 1 and ApiToken.objects.get().revoked_at is None


def test_an_anonymous_caller_is_asked_to_authenticate(anonymous: APIClient) -> None:
    refusal(anonymous.get("/api/v1/tokens/"), 401, "not_authenticated")


def test_a_token_with_the_admin_scope_manages_tokens_while_its_user_is_staff(admin_user: Any) -> None:
    _, secret = services.issue_token(actor=admin_user, user=admin_user, name="ops", scopes=["admin"])
    client = bearer(secret)
    created = create(client).json()
    assert created["user"] == "alice"
    entry = AuditLog.objects.get(action="api_token.issue", target_id=str(created["id"]))
    assert entry.actor == admin_user and entry.data["via_token"] == secret[:10]
    assert client.get("/api/v1/tokens/").json()["count"] == 2
    get_user_model().objects.filter(pk=admin_user.pk).update(is_staff=False)
    refusal(client.get("/api/v1/tokens/"), 403, "permission_denied")


def test_revoking_refuses_the_token_from_then_on_and_audits_the_reason(admin_client: APIClient) -> None:
    created = create(admin_client).json()
    response = admin_client.post(f"/api/v1/tokens/{created['id']}/revoke/", {"reason": "leaked"}, format="json")
    assert response.status_code == 200, response.content
    assert response.json()["revoked_at"] and "token" not in response.json()
    entry = AuditLog.objects.get(action="api_token.revoke")
    assert entry.actor_label == "alice" and entry.reason == "leaked"
    assert entry.data["prefix"] == created["prefix"] and entry.data["scopes"] == ["publish"]
    refusal(bearer(created["token"]).get("/api/v1/models/"), 401, "authentication_failed")


def test_revoking_twice_is_a_conflict_and_revoking_needs_a_reason(admin_client: APIClient) -> None:
    created = create(admin_client).json()
    url = f"/api/v1/tokens/{created['id']}/revoke/"
    assert "reason" in refusal(admin_client.post(url, {}, format="json"), 400, "invalid")["fields"]
    assert admin_client.post(url, {"reason": "rotated"}, format="json").status_code == 200
    refusal(admin_client.post(url, {"reason": "again"}, format="json"), 409, "token_revoked")
    refusal(admin_client.post("/api/v1/tokens/999999/revoke/", {"reason": "x"}, format="json"), 404, "not_found")
    assert AuditLog.objects.filter(action="api_token.revoke").count() == 1


def test_an_expired_token_is_refused(admin_client: APIClient) -> None:
    secret = create(admin_client, expires_in_days=1).json()["token"]
    ApiToken.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    refusal(bearer(secret).get("/api/v1/models/"), 401, "authentication_failed")


def test_the_schema_documents_every_answer_of_the_token_endpoints(admin_client: APIClient) -> None:
    paths = admin_client.get("/api/v1/schema/?format=json").json()["paths"]
    listing = paths["/api/v1/tokens/"]
    assert set(listing["get"]["responses"]) >= {"200", "400", "401", "403"}
    assert set(listing["post"]["responses"]) >= {"201", "400", "401", "403", "413", "415"}
    revoke = paths["/api/v1/tokens/{id}/revoke/"]["post"]["responses"]
    assert set(revoke) >= {"200", "400", "401", "403", "404", "409", "413", "415"}
    assert "/api/v1/tokens/{id}/" in paths

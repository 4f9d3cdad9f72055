"""``manage.py api_token create|list|revoke``: the secret once, only its hash kept, every action audited."""

from __future__ import annotations

from datetime import timedelta
from io import StringIO
from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone
from rest_framework.test import APIClient

from core import tokens
from core.models import ApiToken, AuditLog

pytestmark = pytest.mark.django_db


def run(*args: str) -> tuple[str, str]:
    out, err = StringIO(), StringIO()
    call_command("api_token", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def create(*extra: str, user: str = "alice", scopes: tuple[str, ...] = ("publish",)) -> str:
    args = ["create", "--user", user, "--name", "vision CI"]
    for scope in scopes:
        args += ["--scope", scope]
    out, _ = run(*args, *extra)
    return out.strip()


def bearer(secret: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    return client


def test_create_prints_the_secret_alone_and_stores_only_its_hash(admin_user: Any) -> None:
    secret = create(scopes=("publish", "read"))
    assert secret.startswith("eft_") and "\n" not in secret
    token = ApiToken.objects.get()
    assert token.key_hash == tokens.digest(secret)
    assert secret not in {token.key_hash, token.prefix, token.name}
    assert token.prefix == secret[:10]
    assert token.user == admin_user
    assert token.scopes == ["read", "publish"]
    assert token.expires_at is None


def test_the_created_token_authenticates_against_the_api(admin_user: Any) -> None:
    secret = create()
    response = bearer(secret).get("/api/v1/models/")
    assert response.status_code == 200, response.content
    assert ApiToken.objects.get().last_used_at is not None


def test_create_is_audited_with_who_what_prefix_scopes_and_expiry(admin_user: Any) -> None:
    create("--expires-in-days", "30")
    token = ApiToken.objects.get()
    entry = AuditLog.objects.get(action="api_token.issue")
    assert entry.actor is None and entry.actor_label.startswith("manage.py api_token")
    assert entry.target_id == str(token.pk)
    assert entry.data["prefix"] == token.prefix
    assert entry.data["user"] == "alice"
    assert entry.data["scopes"] == ["publish"]
    assert entry.data["expires_at"] == token.expires_at.isoformat()  # type: ignore[union-attr]
    assert all(token.key_hash not in str(value) for value in entry.data.values())


def test_expires_in_days_sets_the_expiry_that_many_days_ahead(admin_user: Any) -> None:
    create("--expires-in-days", "7")
    expires_at = ApiToken.objects.get().expires_at
    assert expires_at is not None
    assert abs(expires_at - (timezone.now() + timedelta(days=7))) < timedelta(minutes=1)


def test_expires_at_takes_an_iso_date_time_with_a_zone(admin_user: Any) -> None:
    create("--expires-at", "2099-01-31T00:00:00+00:00")
    assert ApiToken.objects.get().expires_at.isoformat() == "2099-01-31T00:00:00+00:00"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--expires-at", "2099-01-31T00:00:00"), "zone"),
        (("--expires-at", "tomorrow"), "zone"),
        (("--expires-at", "2001-01-31T00:00:00Z"), "past"),
        (("--expires-in-days", "0"), "at least 1"),
    ],
)
def test_create_refuses_a_bad_expiry(admin_user: Any, extra: tuple[str, str], message: str) -> None:
    with pytest.raises(CommandError, match=message):
        create(*extra)
    assert not ApiToken.objects.exists() and not AuditLog.objects.exists()


def test_create_refuses_an_unknown_scope(admin_user: Any) -> None:
    with pytest.raises(CommandError, match="invalid choice"):
        create(scopes=("everything",))
    assert not ApiToken.objects.exists()


def test_create_refuses_an_unknown_user(db: None) -> None:
    with pytest.raises(CommandError, match="No user 'nobody'"):
        create(user="nobody")


def test_create_refuses_the_admin_scope_for_a_user_who_is_a_viewer(viewer_user: Any) -> None:
    with pytest.raises(CommandError, match="is a viewer"):
        create(user="victor", scopes=("admin",))
    assert not ApiToken.objects.exists()


def test_list_shows_each_token_but_never_its_hash_or_secret(admin_user: Any) -> None:
    secret = create(scopes=("publish", "rollout"))
    token = ApiToken.objects.get()
    out, _ = run("list")
    header, line = out.strip().splitlines()
    assert header.split("\t") == [
        "id",
        "prefix",
        "name",
        "user",
        "scopes",
        "created",
        "expires",
        "last used",
        "revoked",
    ]
    assert line.split("\t")[:5] == [str(token.pk), token.prefix, "vision CI", "alice", "publish,rollout"]
    assert token.key_hash not in out and secret not in out


def test_revoke_by_prefix_refuses_the_token_from_then_on_and_audits_the_reason(admin_user: Any) -> None:
    secret = create()
    token = ApiToken.objects.get()
    run("revoke", token.prefix, "--reason", "leaked in a build log")
    token.refresh_from_db()
    assert token.revoked_at is not None
    entry = AuditLog.objects.get(action="api_token.revoke")
    assert entry.reason == "leaked in a build log"
    assert entry.data["prefix"] == token.prefix and entry.data["scopes"] == ["publish"]
    response = bearer(secret).get("/api/v1/models/")
    assert response.status_code == 401 and response.json()["code"] == "authentication_failed"


def test_revoke_by_id_works_too_and_a_second_revoke_is_refused(admin_user: Any) -> None:
    create()
    token = ApiToken.objects.get()
    run("revoke", str(token.pk), "--reason", "rotated")
    with pytest.raises(CommandError, match="already revoked"):
        run("revoke", str(token.pk), "--reason", "again")
    assert AuditLog.objects.filter(action="api_token.revoke").count() == 1


def test_revoke_refuses_an_unknown_token(db: None) -> None:
    with pytest.raises(CommandError, match="No API token"):
        run("revoke", "eft_nope00", "--reason", "x")


def test_an_expired_token_is_refused(admin_user: Any) -> None:
    secret = create("--expires-in-days", "1")
    ApiToken.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    response = bearer(secret).get("/api/v1/models/")
    assert response.status_code == 401 and response.json()["code"] == "authentication_failed"


def test_revoke_asks_for_the_id_when_two_tokens_share_a_prefix(admin_user: Any) -> None:
    create()
    create()
    first, second = ApiToken.objects.order_by("pk")
    ApiToken.objects.filter(pk=second.pk).update(prefix=first.prefix)
    with pytest.raises(CommandError, match="use its id"):
        run("revoke", first.prefix, "--reason", "x")
    assert not ApiToken.objects.filter(revoked_at__isnull=False).exists()

"""The tokens page: admins only, a new secret shown once, revocation with a reason, every change audited."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from django.utils import timezone

from core import tokens as secrets
from core.models import ApiToken, AuditLog
from fleet import services
from fleet.access import set_role
from fleet.models import EnrollmentToken, Site

pytestmark = pytest.mark.django_db

URL = "/tokens/"


def api_token(**fields: Any) -> dict[str, Any]:
    form = {"kind": "api", "api-name": "ci-publish", "api-user": "alice", "api-scopes": ["read", "publish"]}
    form.update({f"api-{k}": v for k, v in fields.items()})
    form.setdefault("api-expires", "30")
    return form


def enrollment_token(site: str = "plant-a", **fields: Any) -> dict[str, Any]:
    return {
        "kind": "enrollment",
        "enroll-site": site,
        "enroll-ttl_hours": "5",
        **{f"enroll-{k}": v for k, v in fields.items()},
    }


def operator_of(*sites: Site, name: str = "olga") -> Any:
    user = get_user_model().objects.create_user(name, password=f"pw-{name}-123")
    set_role(actor=None, user=user, kind="operator", sites=sites)
    return user


def signed_in(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def issued(admin_user: Any) -> ApiToken:
    token, _ = ApiToken.issue(admin_user, name="old-ci", scopes=["read"])
    return token


@pytest.fixture
def usable(site: Site, admin_user: Any) -> EnrollmentToken:
    row, _ = EnrollmentToken.issue(site, note="line 3 camera", created_by=admin_user)
    return row


# --- who may ------------------------------------------------------------------------------


def test_anonymous_visitors_are_sent_to_sign_in(client: Client) -> None:
    assert client.get(URL)["Location"].startswith("/login/")


@pytest.mark.parametrize("who", ["viewer", "operator"])
def test_anyone_but_an_admin_is_refused_even_a_forged_post(
    who: str, viewer_user: Any, site: Site, issued: ApiToken, usable: EnrollmentToken
) -> None:
    client = signed_in(viewer_user if who == "viewer" else operator_of(site))
    before = AuditLog.objects.count()

    assert client.get(URL).status_code == 403
    assert client.post(URL, api_token(user="alice", scopes=["admin"])).status_code == 403
    assert client.post(URL, enrollment_token()).status_code == 403
    assert client.post(f"/tokens/api/{issued.pk}/revoke/", {"reason": "mine now"}).status_code == 403
    assert client.post(f"/tokens/enrollment/{usable.pk}/revoke/", {"reason": "mine now"}).status_code == 403

    assert ApiToken.objects.count() == 1 and EnrollmentToken.objects.count() == 1
    issued.refresh_from_db()
    usable.refresh_from_db()
    assert issued.revoked_at is None and usable.revoked_at is None
    assert AuditLog.objects.count() == before


def test_a_post_needs_the_csrf_token(admin_user: Any) -> None:
    client = Client(enforce_csrf_checks=True)
    client.force_login(admin_user)
    assert client.post(URL, api_token()).status_code == 403
    assert not ApiToken.objects.exists()


# --- API tokens ---------------------------------------------------------------------------


def test_an_admin_creates_an_api_token_and_sees_its_secret_in_that_answer_only(
    admin_client: Client, admin_user: Any
) -> None:
    response = admin_client.post(URL, api_token(name="ci-publish", expires="30"))

    assert response.status_code == 201
    assert "no-store" in response["Cache-Control"]
    body = response.content.decode()
    secret = next(s for s in body.split('"') if s.startswith("eft_") and len(s) > 20)
    token = ApiToken.objects.get()
    assert secrets.matches(secret, token.key_hash) and token.user == admin_user
    assert token.scopes == ["read", "publish"] and token.name == "ci-publish"
    assert timedelta(days=29) < token.expires_at - timezone.now() <= timedelta(days=30)
    entry = AuditLog.objects.get(action="api_token.issue")
    assert entry.actor == admin_user and entry.data["prefix"] == token.prefix

    for later in ("/tokens/", "/audit/", "/tokens/?page=1"):
        later_body = admin_client.get(later).content.decode()
        assert secret not in later_body and token.prefix in later_body


def test_an_api_token_for_another_user_gets_no_more_than_their_role_allows(
    admin_client: Client, viewer_user: Any
) -> None:
    response = admin_client.post(URL, api_token(user="victor", scopes=["read", "fleet"]))
    body = response.content.decode()
    assert response.status_code == 400 and 'data-testid="scopes-error"' in body and "victor is a viewer" in body
    assert not ApiToken.objects.exists() and 'data-testid="new-secret"' not in body

    assert admin_client.post(URL, api_token(user="victor", scopes=["read"], expires="never")).status_code == 201
    assert ApiToken.objects.get().user == viewer_user and ApiToken.objects.get().expires_at is None


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ({"user": "nobody"}, "No user is called"),
        ({"scopes": []}, "This field is required"),
        ({"name": "  "}, "This field is required"),
    ],
)
def test_a_bad_api_token_request_says_why_and_creates_nothing(
    admin_client: Client, fields: dict[str, Any], error: str
) -> None:
    response = admin_client.post(URL, api_token(**fields))
    assert response.status_code == 400 and error in response.content.decode()
    assert not ApiToken.objects.exists() and not AuditLog.objects.filter(action="api_token.issue").exists()


def test_an_admin_revokes_an_api_token_with_a_reason(admin_client: Client, admin_user: Any, issued: ApiToken) -> None:
    response = admin_client.post(f"/tokens/api/{issued.pk}/revoke/", {"reason": "left the team"}, follow=True)

    assert response.redirect_chain == [(URL, 302)]
    body = response.content.decode()
    assert "API token old-ci" in body and "revoked" in body
    issued.refresh_from_db()
    assert issued.revoked_at is not None and not issued.is_usable()
    entry = AuditLog.objects.get(action="api_token.revoke")
    assert (entry.actor, entry.reason) == (admin_user, "left the team")
    assert f'action="/tokens/api/{issued.pk}/revoke/"' not in body


def test_a_revocation_without_a_reason_changes_nothing(admin_client: Client, issued: ApiToken) -> None:
    body = admin_client.post(f"/tokens/api/{issued.pk}/revoke/", {"reason": " "}, follow=True).content.decode()
    assert "old-ci was not revoked: Say why the token is revoked." in body
    issued.refresh_from_db()
    assert issued.revoked_at is None


def test_revoking_twice_says_so(admin_client: Client, issued: ApiToken) -> None:
    admin_client.post(f"/tokens/api/{issued.pk}/revoke/", {"reason": "once"})
    body = admin_client.post(f"/tokens/api/{issued.pk}/revoke/", {"reason": "twice"}, follow=True).content.decode()
    assert "already revoked" in body and AuditLog.objects.filter(action="api_token.revoke").count() == 1


def test_revoking_needs_a_post(admin_client: Client, issued: ApiToken) -> None:
    assert admin_client.get(f"/tokens/api/{issued.pk}/revoke/").status_code == 405


# --- enrollment tokens --------------------------------------------------------------------


def test_an_admin_creates_an_enrollment_token_shown_once_that_enrolls_one_device(
    admin_client: Client, admin_user: Any, site: Site
) -> None:
    response = admin_client.post(URL, enrollment_token(note="belt 2"))

    assert response.status_code == 201 and "no-store" in response["Cache-Control"]
    body = response.content.decode()
    secret = next(s for s in body.split('"') if s.startswith("efe_") and len(s) > 20)
    row = EnrollmentToken.objects.get()
    assert (row.site, row.note, row.created_by) == (site, "belt 2", admin_user)
    assert timedelta(hours=4, minutes=59) < row.expires_at - timezone.now() <= timedelta(hours=5)
    entry = AuditLog.objects.get(action="enrollment_token.issue")
    assert (entry.actor, entry.target_id, entry.data["token"]) == (admin_user, str(site.pk), row.prefix)
    assert secret not in admin_client.get(URL).content.decode()

    device = services.enroll(token=secret, name="cam-new", site_slug="plant-a", facts={}).device
    assert device.site == site
    assert 'data-testid="token-state">used<' in admin_client.get(URL).content.decode()


@pytest.mark.parametrize(("fields", "status"), [({"ttl_hours": "0"}, 400), ({"ttl_hours": "721"}, 400)])
def test_an_enrollment_token_lives_an_hour_to_thirty_days(
    admin_client: Client, site: Site, fields: dict[str, str], status: int
) -> None:
    response = admin_client.post(URL, enrollment_token(**fields))
    assert response.status_code == status and 'data-testid="ttl-error"' in response.content.decode()
    assert not EnrollmentToken.objects.exists()


def test_an_enrollment_token_for_an_unknown_site_is_refused(admin_client: Client, site: Site) -> None:
    assert admin_client.post(URL, enrollment_token(site="nowhere")).status_code == 400
    assert not EnrollmentToken.objects.exists()


def test_an_admin_revokes_an_enrollment_token_and_it_no_longer_enrolls(
    admin_client: Client, admin_user: Any, site: Site
) -> None:
    row, secret = EnrollmentToken.issue(site)
    response = admin_client.post(f"/tokens/enrollment/{row.pk}/revoke/", {"reason": "sent by mistake"}, follow=True)

    assert "revoked" in response.content.decode()
    row.refresh_from_db()
    assert row.revoked_at is not None
    entry = AuditLog.objects.get(action="enrollment_token.revoke")
    assert (entry.actor, entry.reason, entry.data["token"]) == (admin_user, "sent by mistake", row.prefix)
    with pytest.raises(services.EnrollmentError) as refused:
        services.enroll(token=secret, name="cam-x", site_slug="plant-a", facts={})
    assert refused.value.code == "unknown_token"


def test_a_spent_enrollment_token_cannot_be_revoked(admin_client: Client, site: Site) -> None:
    row, secret = EnrollmentToken.issue(site)
    services.enroll(token=secret, name="cam-x", site_slug="plant-a", facts={})
    body = admin_client.post(f"/tokens/enrollment/{row.pk}/revoke/", {"reason": "late"}, follow=True).content.decode()
    assert "already used" in body
    row.refresh_from_db()
    assert row.revoked_at is None and not AuditLog.objects.filter(action="enrollment_token.revoke").exists()


def test_the_page_lists_both_kinds_with_their_state_and_no_placeholder_text(
    admin_client: Client, issued: ApiToken, usable: EnrollmentToken, site: Site
) -> None:
    expired, _ = EnrollmentToken.issue(site, ttl=timedelta(hours=1))
    EnrollmentToken.objects.filter(pk=expired.pk).update(expires_at=timezone.now() - timedelta(minutes=1))
    body = admin_client.get(URL).content.decode()
    assert f'data-api-token="{issued.pk}"' in body and f'data-enrollment-token="{usable.pk}"' in body
    assert body.count('data-testid="token-state">active<') == 1
    assert (
        body.count('data-testid="token-state">usable<') == 1 and body.count('data-testid="token-state">expired<') == 1
    )
    assert "line 3 camera" in body and "None" not in body
    # Only a usable enrollment token has a revoke form.
    assert f"/tokens/enrollment/{usable.pk}/revoke/" in body and f"/tokens/enrollment/{expired.pk}/revoke/" not in body


def test_without_a_site_there_is_no_enrollment_form(admin_client: Client) -> None:
    body = admin_client.get(URL).content.decode()
    assert "Create a site first" in body and 'name="enroll-site"' not in body

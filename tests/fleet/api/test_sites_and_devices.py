from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from rest_framework.test import APIClient

from core.models import ApiToken, AuditLog
from fleet.models import Device, Site

pytestmark = pytest.mark.django_db


def test_anonymous_callers_see_nothing(anonymous: APIClient, site: Site) -> None:
    assert anonymous.get("/api/v1/sites/").status_code in (401, 403)
    assert anonymous.get("/api/v1/devices/").status_code in (401, 403)


def test_a_viewer_can_list_but_not_create_sites(viewer_client: APIClient, site: Site) -> None:
    listing = viewer_client.get("/api/v1/sites/")
    assert listing.status_code == 200 and [s["slug"] for s in listing.json()["results"]] == ["plant-a"]
    assert viewer_client.post("/api/v1/sites/", {"slug": "x", "name": "X"}).status_code == 403


def test_an_admin_creates_a_site_and_it_is_audited(admin_client: APIClient) -> None:
    response = admin_client.post("/api/v1/sites/", {"slug": "depot-9", "name": "Depot 9"}, format="json")
    assert response.status_code == 201
    # The same fields as every other answer about a site, the counts included.
    assert (response.json()["device_count"], response.json()["online_count"]) == (0, 0)
    assert AuditLog.objects.filter(action="site.create", actor_label="alice").exists()


def test_a_site_slug_must_be_a_slug(admin_client: APIClient) -> None:
    response = admin_client.post("/api/v1/sites/", {"slug": "Bad Slug!", "name": "X"}, format="json")
    assert response.status_code == 400 and list(response.json()["fields"]) == ["slug"]


def test_a_token_needs_the_fleet_scope_to_write(token_client: Callable[..., APIClient]) -> None:
    body = {"slug": "s1", "name": "S1"}
    assert token_client("publish").post("/api/v1/sites/", body, format="json").status_code == 403
    assert token_client("publish").get("/api/v1/sites/").status_code == 200
    assert token_client("fleet").post("/api/v1/sites/", body, format="json").status_code == 201


def test_a_revoked_or_unknown_token_is_refused(token_client: Callable[..., APIClient]) -> None:
    client = token_client("fleet")
    ApiToken.objects.update(revoked_at="2020-01-01T00:00:00Z")
    assert client.get("/api/v1/sites/").status_code == 401
    stranger = APIClient()
    stranger.credentials(HTTP_AUTHORIZATION="Bearer eft_made-up")
    assert stranger.get("/api/v1/sites/").status_code == 401


def test_api_tokens_are_stored_hashed(admin_user: Any) -> None:
    row, key = ApiToken.issue(admin_user, name="ci", scopes=["publish"])
    assert key not in row.key_hash and row.prefix == key[:10]


def test_an_admin_issues_an_enrollment_token_shown_once(admin_client: APIClient, site: Site) -> None:
    response = admin_client.post(f"/api/v1/sites/{site.slug}/enrollment-tokens/", {"ttl_hours": 2}, format="json")
    assert response.status_code == 201
    token = response.json()["token"]
    enrolled = APIClient().post("/api/v1/enroll", {"token": token, "name": "cam-9"}, format="json")
    assert enrolled.status_code == 201


def test_a_viewer_cannot_issue_enrollment_tokens(viewer_client: APIClient, site: Site) -> None:
    assert viewer_client.post(f"/api/v1/sites/{site.slug}/enrollment-tokens/", {}).status_code == 403


def test_an_admin_lists_and_revokes_an_enrollment_token_and_it_no_longer_enrolls(
    admin_client: APIClient, viewer_client: APIClient, site: Site
) -> None:
    issued = admin_client.post(f"/api/v1/sites/{site.slug}/enrollment-tokens/", {"note": "line 3"}, format="json")
    token, pk = issued.json()["token"], issued.json()["id"]
    url = f"/api/v1/enrollment-tokens/{pk}/revoke/"

    listed = admin_client.get("/api/v1/enrollment-tokens/").json()["results"]
    refused = viewer_client.post(url, {"reason": "mine now"}, format="json")
    revoked = admin_client.post(url, {"reason": "leaked in a chat"}, format="json")
    again = admin_client.post(url, {"reason": "twice"}, format="json")
    enrolled = APIClient().post("/api/v1/enroll", {"token": token, "name": "cam-9"}, format="json")

    assert [(row["prefix"], row["note"], "token" in row) for row in listed] == [
        (issued.json()["prefix"], "line 3", False)
    ]
    assert refused.status_code == 403 and viewer_client.get("/api/v1/enrollment-tokens/").status_code == 403
    assert revoked.status_code == 200 and revoked.json()["revoked_at"]
    assert again.status_code == 409 and again.json()["code"] == "token_revoked"
    assert enrolled.status_code in (401, 403) and not Device.objects.filter(name="cam-9").exists()
    entry = AuditLog.objects.get(action="enrollment_token.revoke")
    assert entry.reason == "leaked in a chat" and entry.data["token"] == issued.json()["prefix"]


def test_devices_filter_by_site_state_and_label(
    admin_client: APIClient, site: Site, other_site: Site, enroll_device: Callable[..., Any]
) -> None:
    a = enroll_device(site, "cam-1", labels={"line": "1"}).device
    enroll_device(site, "cam-2", labels={"line": "2"})
    enroll_device(other_site, "cam-1")
    Device.objects.filter(pk=a.pk).update(online=True)

    def ids(query: str) -> set[str]:
        response = admin_client.get(f"/api/v1/devices/?{query}")
        assert response.status_code == 200
        return {d["device_id"] for d in response.json()["results"]}

    assert len(ids("site=plant-a")) == 2
    assert ids("online=true") == {a.device_id}
    assert ids("label=line=1") == {a.device_id}
    assert ids("q=cam-1") >= {a.device_id} and len(ids("q=cam-1")) == 2


def test_site_listing_counts_online_devices(
    admin_client: APIClient, site: Site, enroll_device: Callable[..., Any]
) -> None:
    enroll_device(site, "cam-1")
    online = enroll_device(site, "cam-2").device
    Device.objects.filter(pk=online.pk).update(online=True)
    row = admin_client.get(f"/api/v1/sites/{site.slug}/").json()
    assert (row["device_count"], row["online_count"]) == (2, 1)


def test_device_labels_must_be_strings(admin_client: APIClient, site: Site, enroll_device: Callable[..., Any]) -> None:
    device = enroll_device(site).device
    response = admin_client.patch(f"/api/v1/devices/{device.device_id}/", {"labels": {"a": 1}}, format="json")
    assert response.status_code == 400 and response.json()["code"] == "invalid"
    assert "labels" in response.json()["fields"]


def test_a_site_with_devices_cannot_be_deleted(
    admin_client: APIClient, site: Site, enroll_device: Callable[..., Any]
) -> None:
    enroll_device(site)
    response = admin_client.delete(f"/api/v1/sites/{site.slug}/")
    assert response.status_code == 409 and response.json()["code"] == "site_has_devices"
    assert Site.objects.filter(pk=site.pk).exists()


def test_renaming_a_device_to_a_name_taken_in_its_site_is_refused(
    admin_client: APIClient, site: Site, enroll_device: Callable[..., Any]
) -> None:
    enroll_device(site, name="cam-1")
    device = enroll_device(site, name="cam-2").device
    response = admin_client.patch(f"/api/v1/devices/{device.device_id}/", {"name": "cam-1"}, format="json")
    assert response.status_code == 400 and response.json()["code"] == "invalid"
    assert "name" in response.json()["fields"]
    device.refresh_from_db()
    assert device.name == "cam-2"
    response = admin_client.patch(f"/api/v1/devices/{device.device_id}/", {"name": "cam-2"}, format="json")
    assert response.status_code == 200


def test_a_rename_that_loses_the_race_for_a_name_is_refused(
    admin_client: APIClient, site: Site, enroll_device: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from fleet.api.serializers import DeviceSerializer

    enroll_device(site, name="cam-1")
    device = enroll_device(site, name="cam-2").device
    monkeypatch.setattr(DeviceSerializer, "validate_name", lambda self, value: value)
    response = admin_client.patch(f"/api/v1/devices/{device.device_id}/", {"name": "cam-1"}, format="json")
    assert response.status_code == 400 and response.json()["code"] == "invalid"
    assert "name" in response.json()["fields"]


def test_a_site_latency_budget_is_optional_and_bounded(admin_client: APIClient, site: Site) -> None:
    url = f"/api/v1/sites/{site.slug}/"
    assert admin_client.get(url).json()["latency_budget_ms"] is None

    for bad in (0, -5, 600_001, "fast", 1.5):
        refused = admin_client.patch(url, {"latency_budget_ms": bad}, format="json")
        assert refused.status_code == 400, bad
        assert list(refused.json()["fields"]) == ["latency_budget_ms"]

    assert admin_client.patch(url, {"latency_budget_ms": 120}, format="json").json()["latency_budget_ms"] == 120
    site.refresh_from_db()
    assert site.latency_budget_ms == 120
    assert admin_client.patch(url, {"latency_budget_ms": None}, format="json").json()["latency_budget_ms"] is None

from __future__ import annotations

import base64
from datetime import timedelta
from typing import Any

import pytest
from rest_framework.test import APIClient

from core import tokens
from core.models import AuditLog
from fleet.models import Device, EnrollmentToken, Site
from registry.models import SigningKey

pytestmark = pytest.mark.django_db

URL = "/api/v1/enroll"


def enroll(client: APIClient, token: str, **body: Any) -> Any:
    return client.post(URL, {"token": token, "name": "cam-1", **body}, format="json")


def basic(device_id: str, secret: str) -> str:
    return "Basic " + base64.b64encode(f"{device_id}:{secret}".encode()).decode()


def test_it_enrolls_a_device_and_returns_its_identity(anonymous: APIClient, site: Site) -> None:
    _, token = EnrollmentToken.issue(site)
    response = enroll(anonymous, token, site="plant-a", hardware_profile="jetson-orin", labels={"line": "3"})
    assert response.status_code == 201, response.content
    body = response.json()
    device = Device.objects.get(device_id=body["device_id"])
    assert device.site == site and device.hardware_profile == "jetson-orin" and device.labels == {"line": "3"}
    assert body["secret"].startswith("efd_") and body["broker_url"].startswith("mqtt")
    # The first signing key is made on first use; the device trusts it from the start.
    assert [k["key_id"] for k in body["trust_store"]] == [k.key_id for k in SigningKey.objects.all()] != []
    # Only the hash of the secret is kept.
    credential = device.credentials.get()
    assert credential.secret_hash == tokens.digest(body["secret"]) and body["secret"] not in credential.secret_hash
    assert AuditLog.objects.filter(action="device.enroll", target_id=device.device_id).exists()


def test_the_issued_secret_authenticates_the_device(anonymous: APIClient, site: Site) -> None:
    _, token = EnrollmentToken.issue(site)
    body = enroll(anonymous, token).json()
    anonymous.credentials(HTTP_AUTHORIZATION=basic(body["device_id"], body["secret"]))
    response = anonymous.get("/api/v1/device/self")
    assert response.status_code == 200 and response.json()["device_id"] == body["device_id"]


def test_a_reused_token_is_refused(anonymous: APIClient, site: Site) -> None:
    _, token = EnrollmentToken.issue(site)
    assert enroll(anonymous, token).status_code == 201
    response = enroll(anonymous, token, name="cam-2")
    assert response.status_code == 409 and response.json()["code"] == "token_used"
    assert Device.objects.count() == 1


def test_an_expired_token_is_refused(anonymous: APIClient, site: Site) -> None:
    row, token = EnrollmentToken.issue(site)
    EnrollmentToken.objects.filter(pk=row.pk).update(expires_at=row.created_at - timedelta(seconds=1))
    response = enroll(anonymous, token)
    assert response.status_code == 410 and response.json()["code"] == "token_expired"
    assert not Device.objects.exists()


def test_an_unknown_token_is_refused(anonymous: APIClient, site: Site) -> None:
    response = enroll(anonymous, "efe_not-a-token")
    assert response.status_code == 401 and response.json()["code"] == "unknown_token"


def test_a_token_for_another_site_is_refused(anonymous: APIClient, site: Site, other_site: Site) -> None:
    _, token = EnrollmentToken.issue(site)
    response = enroll(anonymous, token, site=other_site.slug)
    assert response.status_code == 403 and response.json()["code"] == "wrong_site"
    # The token is not spent by a refused attempt.
    assert enroll(anonymous, token, site=site.slug).status_code == 201


def test_a_malformed_request_is_refused_with_the_field_named(anonymous: APIClient, site: Site) -> None:
    response = anonymous.post(URL, {"token": "x", "name": "../etc/passwd"}, format="json")
    assert response.status_code == 400 and response.json()["code"] == "invalid"
    assert list(response.json()["fields"]) == ["name"]


def test_a_name_already_enrolled_at_the_site_is_refused(anonymous: APIClient, site: Site) -> None:
    _, first = EnrollmentToken.issue(site)
    _, second = EnrollmentToken.issue(site)
    assert enroll(anonymous, first).status_code == 201
    response = enroll(anonymous, second)
    assert response.status_code == 409 and response.json()["code"] == "name_taken"


def test_a_revoked_device_is_refused_by_the_api(admin_client: APIClient, anonymous: APIClient, site: Site) -> None:
    _, token = EnrollmentToken.issue(site)
    body = enroll(anonymous, token).json()
    revoke = admin_client.post(f"/api/v1/devices/{body['device_id']}/revoke/", {"reason": "stolen"}, format="json")
    assert revoke.status_code == 200 and revoke.json()["revoked"] is True
    anonymous.credentials(HTTP_AUTHORIZATION=basic(body["device_id"], body["secret"]))
    assert anonymous.get("/api/v1/device/self").status_code == 401
    log = AuditLog.objects.get(action="device.revoke")
    assert (log.actor_label, log.reason) == ("alice", "stolen")


def test_a_revoked_devices_name_can_be_enrolled_again(
    admin_client: APIClient, anonymous: APIClient, site: Site
) -> None:
    _, token = EnrollmentToken.issue(site)
    old = enroll(anonymous, token).json()
    admin_client.post(f"/api/v1/devices/{old['device_id']}/revoke/", {"reason": "replaced"}, format="json")
    _, token = EnrollmentToken.issue(site)
    new = enroll(anonymous, token)
    assert new.status_code == 201 and new.json()["device_id"] != old["device_id"]


def test_wrong_device_credentials_are_refused(anonymous: APIClient, site: Site) -> None:
    _, token = EnrollmentToken.issue(site)
    body = enroll(anonymous, token).json()
    anonymous.credentials(HTTP_AUTHORIZATION=basic(body["device_id"], "efd_wrong"))
    assert anonymous.get("/api/v1/device/self").status_code == 401

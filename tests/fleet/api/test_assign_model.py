"""POST /api/v1/devices/{id}/assign-model/: a fleet-scoped token points a device at a published version."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from core.models import AuditLog
from fleet import desired
from fleet.models import Device
from registry.models import ModelVersion
from tests.registry.conftest import make_classifier, make_png_images, metadata_for
from tests.registry.helpers import publish

pytestmark = pytest.mark.django_db


@pytest.fixture
def device(enroll_device: Any, site: Any) -> Device:
    device = enroll_device(site).device
    desired.issue(device, {"config": {"telemetry_interval_s": 30}})
    return device


def url(device: Device) -> str:
    return f"/api/v1/devices/{device.device_id}/assign-model/"


def test_a_fleet_token_assigns_a_published_version_keeping_the_runtime_config(published, device, token_client):
    response = token_client("fleet").post(
        url(device), {"model": "parts", "version": "1.0.0", "config": {"escalation_threshold": 0.4}}, format="json"
    )

    assert response.status_code == 200, response.content
    device.refresh_from_db()
    assert device.desired_generation == 2
    model = device.desired["model"]
    assert (model["name"], model["version"], model["target"]) == ("parts", "1.0.0", "cpu-fp32")
    assert model["bundle_url"].endswith("/download") and len(model["manifest_sha256"]) == 64
    assert device.desired["config"] == {"telemetry_interval_s": 30, "escalation_threshold": 0.4}
    assert AuditLog.objects.filter(action="device.assign_model").count() == 1


def test_an_unknown_version_or_target_is_a_clear_400(published, device, token_client):
    client = token_client("fleet")
    missing = client.post(url(device), {"model": "parts", "version": "9.9.9"}, format="json")
    assert missing.status_code == 400 and missing.json()["code"] == "unknown_version"
    assert list(missing.json()["fields"]) == ["version"]
    no_bundle = client.post(url(device), {"model": "parts", "version": "1.0.0", "target": "gpu-fp16"}, format="json")
    assert no_bundle.status_code == 400 and no_bundle.json()["code"] == "no_bundle"
    assert list(no_bundle.json()["fields"]) == ["target"]
    device.refresh_from_db()
    assert device.desired_generation == 1, "nothing changed"


def test_a_token_without_the_fleet_scope_is_refused(published, device, token_client):
    response = token_client("publish").post(url(device), {"model": "parts", "version": "1.0.0"}, format="json")
    assert response.status_code == 403


def test_an_expired_bundle_is_refused(published, device, token_client):
    ModelVersion.objects.filter(version="1.0.0").update(created_at=timezone.now() - timedelta(days=400))

    response = token_client("fleet").post(url(device), {"model": "parts", "version": "1.0.0"}, format="json")

    assert response.status_code == 400, response.content
    assert response.json()["code"] == "bundle_expired"
    device.refresh_from_db()
    assert device.desired_generation == 1, "nothing changed"


def test_a_bundle_for_a_newer_agent_is_refused_naming_both_versions(published, device, token_client):
    ModelVersion.objects.filter(version="1.0.0").update(min_agent_version="2.0.0")
    Device.objects.filter(pk=device.pk).update(agent_version="1.9.9")

    response = token_client("fleet").post(url(device), {"model": "parts", "version": "1.0.0"}, format="json")

    assert response.status_code == 400, response.content
    body = response.json()
    assert body["code"] == "agent_too_old"
    assert "1.9.9" in body["detail"] and "2.0.0" in body["detail"]
    device.refresh_from_db()
    assert device.desired_generation == 1, "nothing changed"


@pytest.mark.parametrize("agent_version", ["", "2.0.0", "2.1.0"])
def test_a_recent_enough_or_unreported_agent_is_assigned(published, device, token_client, agent_version):
    ModelVersion.objects.filter(version="1.0.0").update(min_agent_version="2.0.0")
    Device.objects.filter(pk=device.pk).update(agent_version=agent_version)

    response = token_client("fleet").post(url(device), {"model": "parts", "version": "1.0.0"}, format="json")

    assert response.status_code == 200, response.content


def test_an_older_version_than_the_device_runs_needs_an_explicit_rollback(published, device, token_client):
    client = token_client("publish")
    newer = publish(client, make_classifier(), metadata_for("1.1.0"), images=make_png_images())
    assert newer.status_code == 201, newer.content
    Device.objects.filter(pk=device.pk).update(reported={"model_name": "parts", "model_version": "1.1.0"})
    device.refresh_from_db()
    fleet = token_client("fleet")

    refused = fleet.post(url(device), {"model": "parts", "version": "1.0.0"}, format="json")
    assert refused.status_code == 409 and refused.json()["code"] == "rollback_required"
    device.refresh_from_db()
    assert device.desired_generation == 1, "nothing changed"

    taken = fleet.post(url(device), {"model": "parts", "version": "1.0.0", "rollback": True}, format="json")
    assert taken.status_code == 200, taken.content
    device.refresh_from_db()
    assert device.desired["rollback_to"] == "1.0.0"
    assert device.desired_document["rollback_to"] == "1.0.0", "the rollback is in the signed bytes"
    assert AuditLog.objects.filter(action="device.rollback", target_id=device.device_id).count() == 1

    forward = fleet.post(url(device), {"model": "parts", "version": "1.1.0"}, format="json")
    assert forward.status_code == 200
    device.refresh_from_db()
    assert "rollback_to" not in device.desired and "rollback_to" not in device.desired_document

"""POST/DELETE /api/v1/devices/{id}/shadow/: a candidate beside the device's model, named in its signed document."""

from __future__ import annotations

from typing import Any

import pytest

from agent.kernel import protocol
from core.models import AuditLog
from fleet.models import Device
from tests.registry.conftest import make_classifier, make_png_images, metadata_for
from tests.registry.helpers import publish

pytestmark = pytest.mark.django_db


@pytest.fixture
def device(enroll_device: Any, site: Any, published: None, token_client: Any) -> Device:
    device = enroll_device(site).device
    answer = token_client("fleet").post(
        f"/api/v1/devices/{device.device_id}/assign-model/", {"model": "parts", "version": "1.0.0"}, format="json"
    )
    assert answer.status_code == 200, answer.content
    newer = publish(token_client("publish"), make_classifier(), metadata_for("1.1.0"), images=make_png_images())
    assert newer.status_code == 201, newer.content
    device.refresh_from_db()
    return device


def url(device: Device) -> str:
    return f"/api/v1/devices/{device.device_id}/shadow/"


def signed(device: Device) -> protocol.Desired:
    device.refresh_from_db()
    return protocol.Desired.model_validate(device.desired_document)


def test_a_candidate_is_named_in_the_signed_document_beside_the_model_and_can_be_stopped(
    device: Device, token_client: Any
) -> None:
    client = token_client("fleet")

    started = client.post(url(device), {"model": "parts", "version": "1.1.0"}, format="json")

    assert started.status_code == 200, started.content
    document = signed(device)
    assert document.model is not None and document.model.version == "1.0.0", "the model in service stays"
    assert document.shadow is not None and document.shadow.version == "1.1.0"
    assert AuditLog.objects.filter(action="device.shadow", target_id=device.device_id).count() == 1

    stopped = client.delete(url(device))
    assert stopped.status_code == 200
    document = signed(device)
    assert document.shadow is None and document.model is not None and document.model.version == "1.0.0"
    assert AuditLog.objects.filter(action="device.shadow_stop").count() == 1


def test_assigning_a_model_ends_the_shadow(device: Device, token_client: Any) -> None:
    client = token_client("fleet")
    assert client.post(url(device), {"model": "parts", "version": "1.1.0"}, format="json").status_code == 200
    promoted = client.post(
        f"/api/v1/devices/{device.device_id}/assign-model/", {"model": "parts", "version": "1.1.0"}, format="json"
    )
    assert promoted.status_code == 200
    document = signed(device)
    assert document.shadow is None and document.model is not None and document.model.version == "1.1.0"


def test_an_unpublished_candidate_or_a_token_without_the_fleet_scope_is_refused(
    device: Device, token_client: Any
) -> None:
    missing = token_client("fleet").post(url(device), {"model": "parts", "version": "9.9.9"}, format="json")
    assert missing.status_code == 400 and missing.json()["code"] == "unknown_version"
    assert (
        token_client("publish").post(url(device), {"model": "parts", "version": "1.1.0"}, format="json").status_code
        == 403
    )
    assert signed(device).shadow is None

"""A site's escalation privacy reaches its devices in their signed desired state, so they enforce it too."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from core.models import AuditLog
from fleet import services as fleet
from fleet.models import Device, Site
from registry.models import ModelVersion
from tests.registry.conftest import make_classifier, make_png_images, metadata_for
from tests.registry.helpers import publish

pytestmark = pytest.mark.django_db


def test_changing_a_sites_privacy_reissues_every_devices_signed_document_with_it(
    site: Site, enroll_device: Callable[..., Any], token_client: Callable[..., Any]
) -> None:
    assert (
        publish(
            token_client("publish"), make_classifier(seed=7), metadata_for("1.0.0"), images=make_png_images()
        ).status_code
        == 201
    )
    version = ModelVersion.objects.get(model__name="parts")
    devices = [enroll_device(site, name=f"cam-{i}").device for i in range(2)]
    for device in devices:
        fleet.assign_model(device, version, actor=None)
    before = {d.pk: Device.objects.get(pk=d.pk).desired_generation for d in devices}
    assert all(Device.objects.get(pk=d.pk).desired_document["config"]["escalation_privacy"] == "full" for d in devices)
    client = token_client("fleet")

    assert (
        client.patch(f"/api/v1/sites/{site.slug}/", {"escalation_privacy": "metadata"}, format="json").status_code
        == 200
    )

    for device in devices:
        device.refresh_from_db()
        assert device.desired_generation == before[device.pk] + 1
        assert device.desired_document["config"]["escalation_privacy"] == "metadata"
        assert device.desired_document["signature"] and device.desired_document["model"]["version"] == "1.0.0"
    audit = AuditLog.objects.get(action="site.escalation_privacy")
    assert audit.data == {"before": "full", "after": "metadata", "devices": 2}
    # Another change to the site leaves the documents alone.
    assert client.patch(f"/api/v1/sites/{site.slug}/", {"name": "Plant A, line 2"}, format="json").status_code == 200
    assert [Device.objects.get(pk=d.pk).desired_generation for d in devices] == [before[d.pk] + 1 for d in devices]

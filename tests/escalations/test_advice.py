"""The threshold advisor over stored escalations, and applying its threshold through the signed desired state."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import pytest

from core.models import AuditLog
from escalations.models import Escalation, EscalationState
from fleet import services as fleet
from fleet.models import Device, Site
from registry.models import ModelVersion
from tests.registry.conftest import make_classifier, make_png_images, metadata_for
from tests.registry.helpers import publish

pytestmark = pytest.mark.django_db

AT = datetime(2026, 12, 1, 10, 0, tzinfo=timezone.utc)


def answered(device: Device, i: int, confidence: float, edge: str, cloud: str, **extra: Any) -> Escalation:
    return Escalation.objects.create(
        device=device,
        site=device.site,
        frame_id=f"f{i}",
        captured_at=AT,
        received_at=AT,
        model_name="parts",
        model_version="1.0.0",
        threshold=0.6,
        result={"label": edge, "confidence": confidence},
        label=edge,
        confidence=confidence,
        privacy="full",
        cloud_label=cloud,
        cloud_confidence=0.99,
        answered_at=AT,
        state=EscalationState.ANSWERED if edge == cloud else EscalationState.REVIEW,
        **extra,
    )


@pytest.fixture
def device(site: Site, enroll_device: Callable[..., Any]) -> Device:
    return enroll_device(site, name="cam-adv").device


def test_the_curve_over_stored_frames_matches_the_one_worked_out_by_hand(device, token_client) -> None:
    # Four unsure frames (all sent) and one fallback sample taken at 1 in 4: it stands for four confident frames.
    answered(device, 1, 0.2, "ok", "crack")  # wrong at the edge
    answered(device, 2, 0.3, "ok", "ok")
    answered(device, 3, 0.4, "scratch", "scratch")
    answered(device, 4, 0.5, "ok", "crack", review_label="ok")  # the reviewer sided with the edge
    answered(device, 5, 0.9, "ok", "ok", reason="fallback", sample_rate=0.25)

    answer = token_client("read").get("/api/v1/escalations/advisor/?model_name=parts&model_version=1.0.0").json()

    assert (answer["frames"], answer["fallback_frames"], answer["weighted_frames"]) == (5, 1, 8)
    points = {round(p["threshold"], 2): p for p in answer["points"]}
    # At 0.35 frames 1 and 2 go to the cloud (right: the truth is the cloud's answer there), the edge keeps
    # 3, 4 (right: the reviewer said ok) and the four confident ones (right): 8 of 8, escalating 2 of 8.
    assert points[0.35]["escalation_rate"] == pytest.approx(2 / 8)
    assert points[0.35]["expected_accuracy"] == pytest.approx(8 / 8)
    # At 0.0 the edge keeps everything and gets frame 1 wrong: 7 of 8.
    assert points[0.0]["escalation_rate"] == 0 and points[0.0]["expected_accuracy"] == pytest.approx(7 / 8)
    # At 0.6 frame 4 goes up, where the cloud's crack is wrong: 7 of 8 again, for 4 of 8 frames sent.
    assert points[0.6]["escalation_rate"] == pytest.approx(4 / 8)
    assert points[0.6]["expected_accuracy"] == pytest.approx(7 / 8)

    picked = token_client("read").get(
        "/api/v1/escalations/advisor/?model_name=parts&model_version=1.0.0&max_escalation_rate=0.3"
    )
    recommendation = picked.json()["recommendation"]
    assert recommendation["binding"] == "budget" and recommendation["point"]["expected_accuracy"] == 1.0
    assert recommendation["point"]["escalation_rate"] <= 0.3


def test_bounds_on_the_query_are_answered_in_the_error_shape(token_client) -> None:
    client = token_client("read")
    for query in (
        "",
        "model_name=parts",
        "model_name=parts&model_version=1&max_escalation_rate=2",
        "model_name=parts&model_version=1&min_accuracy=NaN",
    ):
        response = client.get(f"/api/v1/escalations/advisor/?{query}")
        assert response.status_code == 400 and response.json()["code"] == "invalid", (query, response.content)


def test_applying_a_threshold_sets_it_in_each_devices_signed_desired_state_and_audits_it(
    site: Site, enroll_device: Callable[..., Any], token_client: Callable[..., Any]
) -> None:
    response = publish(
        token_client("publish"), make_classifier(seed=7), metadata_for("1.0.0"), images=make_png_images()
    )
    assert response.status_code == 201
    version = ModelVersion.objects.get(model__name="parts")
    on_it = [enroll_device(site, name=f"cam-{i}").device for i in range(3)]
    for device in on_it:
        fleet.assign_model(device, version, actor=None)
    elsewhere = enroll_device(Site.objects.create(slug="plant-b", name="Plant B"), name="cam-b").device
    fleet.assign_model(elsewhere, version, actor=None)
    body = {"model_name": "parts", "model_version": "1.0.0", "site": site.slug, "threshold": 0.45, "reason": "advisor"}

    response = token_client("fleet").post("/api/v1/escalations/advisor/apply/", body, format="json")

    assert response.status_code == 200, response.content
    assert response.json() == {"site": site.slug, "threshold": 0.45, "devices": 3}
    for device in on_it:
        device.refresh_from_db()
        assert device.desired["config"]["escalation_threshold"] == 0.45
        assert device.desired["model"]["version"] == "1.0.0"  # the model stays as it was
        assert (
            device.desired_document["signature"] and device.desired_document["config"]["escalation_threshold"] == 0.45
        )
    elsewhere.refresh_from_db()
    assert "escalation_threshold" not in elsewhere.desired.get("config", {})
    assert AuditLog.objects.filter(action="device.config").count() == 3
    assert AuditLog.objects.get(action="escalation.threshold_apply").data["devices"] == 3
    # Read-only tokens cannot; a site without such devices is 409.
    assert token_client("read").post("/api/v1/escalations/advisor/apply/", body, format="json").status_code == 403
    other = {**body, "site": "plant-b", "model_version": "9.9.9"}
    refused = token_client("fleet").post("/api/v1/escalations/advisor/apply/", other, format="json")
    assert refused.status_code == 409 and refused.json()["code"] == "no_devices"

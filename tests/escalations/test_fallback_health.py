"""The cloud fallback's health alert: edge and cloud disagreeing on confident frames opens it, per device."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from django.utils import timezone

from escalations.models import Escalation, EscalationState
from fleet.models import Device, Site
from telemetry import alerts
from telemetry.models import Alert

pytestmark = pytest.mark.django_db


def samples(device: Device, frames: int, agreed: int) -> None:
    now = timezone.now()
    for i in range(frames):
        cloud = "ok" if i < agreed else "crack"
        Escalation.objects.create(
            device=device,
            site=device.site,
            frame_id=f"fb-{i}",
            captured_at=now,
            received_at=now,
            model_name="parts",
            model_version="1.0.0",
            threshold=0.6,
            result={"label": "ok", "confidence": 0.95},
            label="ok",
            confidence=0.95,
            privacy="full",
            reason="fallback",
            sample_rate=0.01,
            cloud_label=cloud,
            cloud_confidence=0.9,
            answered_at=now,
            state=EscalationState.ANSWERED if cloud == "ok" else EscalationState.REVIEW,
        )


def test_disagreement_on_confident_frames_opens_the_alert_for_that_device_only_and_it_resolves(
    site: Site, enroll_device: Callable[..., Any]
) -> None:
    drifting, healthy, quiet = (enroll_device(site, name=n).device for n in ("cam-1", "cam-2", "cam-3"))
    samples(drifting, 30, agreed=18)  # 60 %
    samples(healthy, 30, agreed=29)  # 97 %
    samples(quiet, 10, agreed=2)  # too few to judge

    alerts.evaluate()

    opened = Alert.objects.filter(rule__kind="cloud_fallback_disagreement")
    assert [(a.device_id, a.state, a.value) for a in opened] == [(drifting.pk, Alert.State.OPEN, 0.6)]
    assert opened.get().details == {"frames": 30, "agreed": 18, "window_h": 24}

    # The cloud model is fixed and they agree again: the day's samples are over 80 % and it resolves.
    Escalation.objects.filter(device=drifting, reason="fallback").update(cloud_label="ok")
    alerts.evaluate()
    assert Alert.objects.get(rule__kind="cloud_fallback_disagreement").state == Alert.State.RESOLVED

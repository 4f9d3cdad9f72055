"""From messages to alerts: what the demo shows, driven through the bridge, the rollups and the evaluation."""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from agent.kernel import protocol
from bridge.process import Bridge
from fleet.models import Device, Site
from telemetry import alerts
from telemetry.models import Alert
from tests.bridge.helpers import offline_bridge
from tests.telemetry.factories import Feed, batch, roll_up_everything

pytestmark = pytest.mark.django_db


@pytest.fixture
def bridge() -> Bridge:
    return offline_bridge()


@pytest.fixture
def cameras(site: Site, enroll_device: Callable[..., Any]) -> list[Device]:
    return [enroll_device(site, name=f"cam-{i}").device for i in range(4)]


def send(bridge: Bridge, device: Device, records: list[protocol.TelemetryRecord]) -> None:
    topic = protocol.topic(device.device_id, "telemetry")
    bridge.handle_many([(topic, protocol.encode(batch(*records[i : i + 50]))) for i in range(0, len(records), 50)])


def test_stopping_a_device_raises_an_offline_alert_that_resolves_when_it_returns(
    bridge: Bridge, cameras: list[Device]
) -> None:
    now = timezone.now()
    for camera in cameras:
        send(bridge, camera, [Feed(camera).heartbeat(now)])
    alerts.evaluate(timezone.now())
    assert not Alert.objects.exists()

    stopped = cameras[0]
    assert bridge.handle(protocol.topic(stopped.device_id, "status"), protocol.OFFLINE_WILL) == "ok"
    alerts.evaluate(timezone.now())
    alert = Alert.objects.get(rule__kind="offline")
    assert (alert.device_id, alert.state) == (stopped.pk, "open")

    online = protocol.encode(protocol.Status(state="online", ts=timezone.now() + timedelta(seconds=1)))
    bridge.handle(protocol.topic(stopped.device_id, "status"), online)
    alerts.evaluate(timezone.now())
    alert.refresh_from_db()
    assert alert.state == "resolved"


def test_feeding_one_camera_darker_images_raises_a_drift_alert(bridge: Bridge, cameras: list[Device]) -> None:
    rng = random.Random(8)
    now = timezone.now()
    first_hours = now - timedelta(hours=30)
    feeds = {camera.pk: Feed(camera) for camera in cameras}
    # The version's first hours in the field: every camera sees normal images.
    for camera in cameras:
        send(bridge, camera, feeds[camera.pk].windows(first_hours, minutes=20, rng=rng))
    # The last half hour: one camera's images got darker, its confidences fell.
    recent = now - timedelta(minutes=30)
    for camera in cameras:
        dark = camera == cameras[0]
        records = feeds[camera.pk].windows(recent, minutes=25, rng=rng, confidence=(2.5, 3.0) if dark else (6.0, 2.0))
        send(bridge, camera, [*records, feeds[camera.pk].heartbeat(now)])
    roll_up_everything()
    alerts.evaluate(now)
    (alert,) = Alert.objects.filter(rule__kind="confidence_drift")
    assert alert.device_id == cameras[0].pk and alert.state == "open"
    assert alert.value is not None and alert.value >= 0.25
    assert alert.details["model"] == "detector@1.0.0"

"""compare_to_baseline: the figures the rollout gates read, for a set of devices since a moment."""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from fleet.models import Device, Site
from telemetry.services import compare_to_baseline
from tests.telemetry.factories import Feed, roll_up_everything
from tests.telemetry.helpers import alive

pytestmark = pytest.mark.django_db

SINCE = datetime(2026, 11, 22, 12, 0, tzinfo=timezone.utc)
NOW = SINCE + timedelta(minutes=30)


@pytest.fixture
def devices(site: Site, enroll_device: Callable[..., Any]) -> list[Device]:
    devices = [enroll_device(site, name=f"cam-{i}").device for i in range(3)]
    rng = random.Random(11)
    for device in devices:
        feed = Feed(device)
        before = feed.windows(SINCE - timedelta(minutes=30), 30, rng, latency=(20.0, 0.2))
        after = feed.windows(SINCE, 29, rng, latency=(30.0, 0.2), confidence=(4.0, 2.0), model="detector@2.0.0")
        feed.store(before + after)
        alive(device, NOW)
    roll_up_everything()
    return devices


def test_it_reports_latency_regression_confidence_drop_and_escalations(devices: list[Device]) -> None:
    report = compare_to_baseline([d.device_id for d in devices], SINCE, now=NOW)
    # Windows count by their end: the one closing at SINCE is the first of the new stretch.
    assert (report.devices, report.frames_baseline, report.frames_current) == (3, 27_000 - 150, 26_100 + 150)
    assert report.p95_latency_regression == pytest.approx(0.5, abs=0.1)
    assert report.mean_confidence_drop == pytest.approx(0.75 - 0.667, abs=0.02)
    assert report.figures["error_rate"].current == 0.0
    assert report.silent_devices == [] and report.failed_installs == []


def test_it_names_silent_devices_failed_installs_and_unknown_ids(devices: list[Device]) -> None:
    Device.objects.filter(pk=devices[0].pk).update(last_seen=NOW - timedelta(hours=1))
    Device.objects.filter(pk=devices[1].pk).update(reported={"phase": "failed", "error": "reference mismatch"})
    report = compare_to_baseline([*(d.device_id for d in devices), "dev-gone"], SINCE, now=NOW)
    assert report.silent_devices == [devices[0].device_id]
    assert report.failed_installs == [devices[1].device_id]
    assert report.unknown_devices == ["dev-gone"]


def test_without_telemetry_the_figures_are_none_not_zero(site: Site, enroll_device: Callable[..., Any]) -> None:
    device = enroll_device(site).device
    report = compare_to_baseline([device.device_id], SINCE, now=NOW)
    assert report.p95_latency_regression is None and report.escalation_rate_rise is None

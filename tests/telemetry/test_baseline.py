"""compare_to_baseline: the figures the rollout gates read, for a set of devices since a moment."""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from agent.kernel import protocol
from fleet.models import Device, Site
from telemetry.baseline import METRICS, baseline_window_start, matched_control, window_samples
from telemetry.metrics import Summary
from telemetry.models import Quarantine, Resolution, Scope, WindowRollup
from telemetry.services import compare_to_baseline
from tests.payloads import window_data
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


def test_with_a_candidate_its_frames_never_count_in_the_baseline_even_in_the_minute_it_was_installed(
    site: Site, enroll_device: Callable[..., Any]
) -> None:
    """Installed 20 s into a minute, all active 40 s into it: the minute holds both versions, each on its side."""
    device = enroll_device(site).device
    rng = random.Random(5)
    feed = Feed(device)
    old = feed.windows(SINCE - timedelta(minutes=30), 30, rng, confidence=(8.0, 1.0))
    # Two old windows of the install minute (ending at +10 s and +20 s), then the candidate's.
    old += feed.windows(SINCE, 1, rng, per_minute=6, confidence=(8.0, 1.0))[:2]
    new = feed.windows(SINCE + timedelta(seconds=20), 10, rng, confidence=(1.0, 1.0), model="detector@2.0.0")
    feed.store(old + new)
    alive(device, NOW)
    roll_up_everything()
    since = SINCE + timedelta(seconds=40)
    judged = compare_to_baseline([device.device_id], since, now=NOW, candidate=("detector", "2.0.0"))
    assert judged.frames_baseline == 30 * 6 * 50 + 2 * 50
    assert judged.frames_current == 10 * 6 * 50
    assert judged.figures["mean_confidence"].baseline == pytest.approx(8 / 9, abs=0.01)
    assert judged.mean_confidence_drop == pytest.approx(8 / 9 - 1 / 2, abs=0.02)
    # Without naming the candidate its first minute would sit in the baseline, and its frames with it.
    mixed = compare_to_baseline([device.device_id], since, now=NOW)
    assert mixed.frames_baseline > judged.frames_baseline and mixed.frames_current < judged.frames_current


# --- window_samples: one sample per device-minute, what the canary analysis tests --------


def minute_row(
    key: str, bucket: datetime, latencies: list[float], *, model: str = "detector@1.0.0", **extra: Any
) -> None:
    summary = Summary()
    data = window_data(
        bucket, latencies, [0.8] * len(latencies), ["ok"] * len(latencies), seconds=60, model=model, **extra
    )
    summary.add_window(protocol.window_of(protocol.TelemetryRecord(seq=1, kind="window", ts=bucket, data=data)))
    name, version = model.split("@")
    WindowRollup.objects.create(
        resolution=Resolution.MINUTE,
        scope=Scope.DEVICE,
        key=key,
        model_name=name,
        model_version=version,
        bucket=bucket,
        devices=1,
        **summary.totals(),
    )


def test_window_samples_gives_one_sample_per_device_minute_in_one_query(
    django_assert_num_queries: Callable[..., Any],
) -> None:
    for key in ("cam-a", "cam-b", "cam-elsewhere"):
        for minute in range(-1, 4):  # one minute before SINCE, three inside, one at the (open) end
            minute_row(key, SINCE + timedelta(minutes=minute), [10.0 + minute] * 20, errors=minute + 1)

    with django_assert_num_queries(1):
        samples = window_samples(["cam-a", "cam-b"], SINCE, SINCE + timedelta(minutes=3))

    assert set(samples) == set(METRICS)
    assert samples["error_rate"] == pytest.approx([1 / 20, 2 / 20, 3 / 20] * 2)
    # p95 read off each minute's histogram (5 % buckets).
    assert samples["latency_p95_ms"] == pytest.approx([10.0, 11.0, 12.0] * 2, rel=0.05)
    assert samples["mean_confidence"] == pytest.approx([0.825] * 6)  # the bin centre of 0.8
    assert samples["dropped_rate"] == [0.0] * 6


def test_window_samples_merges_the_versions_of_a_minute_unless_one_is_asked_for() -> None:
    minute_row("cam-a", SINCE, [10.0] * 30, model="detector@1.0.0")
    minute_row("cam-a", SINCE, [50.0] * 10, model="detector@2.0.0", errors=5)
    minute_row("cam-a", SINCE + timedelta(minutes=1), [50.0] * 10, model="detector@2.0.0")
    until = SINCE + timedelta(minutes=2)

    both = window_samples(["cam-a"], SINCE, until)
    candidate = window_samples(["cam-a"], SINCE, until, model_name="detector", model_version="2.0.0")

    assert both["error_rate"] == [5 / 40, 0.0]
    assert candidate["error_rate"] == [5 / 10, 0.0]
    assert candidate["latency_p95_ms"] == pytest.approx([50.0, 50.0], rel=0.05)


def test_window_samples_leaves_out_figures_a_minute_cannot_give() -> None:
    minute_row("cam-a", SINCE, [], dropped_frames=4)  # every frame dropped: no latency, confidence or rates of frames
    samples = window_samples(["cam-a"], SINCE, SINCE + timedelta(minutes=1))
    assert samples == {**{m: [] for m in METRICS}, "dropped_rate": [1.0]}


def test_window_samples_quarantines_an_unreadable_row_and_keeps_the_others() -> None:
    minute_row("cam-a", SINCE, [10.0] * 20)
    minute_row("cam-a", SINCE + timedelta(minutes=1), [10.0] * 20)
    WindowRollup.objects.filter(bucket=SINCE).update(latency={"not a bucket": 1})

    samples = window_samples(["cam-a"], SINCE, SINCE + timedelta(minutes=2))

    assert len(samples["latency_p95_ms"]) == 1
    assert Quarantine.objects.filter(source="canary", ref__startswith="window_rollup:").count() == 1


def test_baseline_window_is_as_long_as_the_stretch_since_but_an_hour_to_a_day() -> None:
    assert baseline_window_start(SINCE, SINCE + timedelta(hours=3)) == SINCE - timedelta(hours=3)
    assert baseline_window_start(SINCE, SINCE + timedelta(minutes=5)) == SINCE - timedelta(hours=1)
    assert baseline_window_start(SINCE, SINCE + timedelta(days=3)) == SINCE - timedelta(days=1)


def test_matched_control_keeps_the_canary_hardware_and_puts_its_sites_first(
    site: Site, other_site: Site, enroll_device: Callable[..., Any]
) -> None:
    def device(where: Site, name: str, profile: str) -> str:
        return str(enroll_device(where, name=name, hardware_profile=profile).device.device_id)

    canary = [device(site, "canary", "jetson-nano")]
    far = device(other_site, "far", "jetson-nano")
    near = device(site, "near", "jetson-nano")
    pi = device(site, "pi", "rpi4")
    old_version = [far, near, pi, canary[0], "dev-unknown"]

    assert matched_control(canary, old_version) == [near, far]
    assert matched_control(canary, old_version, limit=1) == [near]
    assert matched_control(canary, []) == []

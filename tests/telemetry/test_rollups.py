"""Rollups: percentiles of merged histograms match numpy on the raw values, and recomputing changes nothing."""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import numpy as np
import pytest
from django.db import transaction
from django.test.utils import override_settings
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.kernel import histogram
from fleet.models import Device, Site
from telemetry import rollups
from telemetry.metrics import Summary
from telemetry.models import HeartbeatRollup, Resolution, Scope, TelemetryRecord, WindowRollup
from tests.payloads import window_data
from tests.telemetry.factories import Feed, batch, record, roll_up_everything, store

pytestmark = pytest.mark.django_db

HOUR_START = datetime(2026, 11, 20, 10, 0, tzinfo=timezone.utc)


@pytest.fixture
def devices(site: Site, enroll_device: Callable[..., Any]) -> list[Device]:
    return [enroll_device(site, name=f"cam-{i}").device for i in range(3)]


latencies = st.lists(st.floats(min_value=0.5, max_value=5000.0, allow_nan=False), min_size=1, max_size=300)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(values=latencies, split=st.randoms(use_true_random=False), q=st.sampled_from([0.5, 0.9, 0.95, 0.99]))
def test_site_percentiles_from_rollups_match_numpy_on_the_raw_values(
    devices: list[Device], values: list[float], split: random.Random, q: float
) -> None:
    savepoint = transaction.savepoint()
    devices = [Device.objects.get(pk=d.pk) for d in devices]  # fresh ack watermarks for each example
    try:
        # Spread the samples over devices, windows and minutes at random, as a fleet would.
        feeds = {d.pk: Feed(d) for d in devices}
        for i in range(0, len(values), 7):
            device = split.choice(devices)
            at = HOUR_START + timedelta(minutes=split.randrange(60), seconds=split.randrange(50))
            feed = feeds[device.pk]
            feed.seq += 1
            chunk = values[i : i + 7]
            feed.store([record(feed.seq, "window", at, window_data(at, chunk, [0.5] * len(chunk)))])
        roll_up_everything()
        row = WindowRollup.objects.get(resolution=Resolution.HOUR, scope=Scope.SITE, bucket=HOUR_START)
        merged = Summary()
        merged.add_totals(row)
        expected = float(np.percentile(values, q * 100, method="inverted_cdf"))
        # Both fall in the same log bucket, whose width is GROWTH - 1 = 5 %.
        assert merged.percentile(q) == pytest.approx(expected, rel=histogram.GROWTH - 1)
        assert row.frames == len(values) and row.devices == len({d for d in devices if feeds[d.pk].seq})
    finally:
        transaction.savepoint_rollback(savepoint)


def test_recomputing_a_bucket_gives_the_same_rows(devices: list[Device]) -> None:
    rng = random.Random(5)
    for device in devices:
        Feed(device).store(Feed(device).windows(HOUR_START, minutes=3, rng=rng))
    roll_up_everything()
    before = list(WindowRollup.objects.order_by("id").values())
    pairs = {(d.pk, HOUR_START + timedelta(minutes=m)) for d in devices for m in range(3)}
    rollups.recompute(pairs)
    rollups.recompute(pairs)
    assert list(WindowRollup.objects.order_by("id").values()) == before


def test_rollups_exist_per_device_site_and_model_version_at_both_resolutions(devices: list[Device]) -> None:
    rng = random.Random(1)
    first, second = Feed(devices[0]), Feed(devices[1])
    first.store([*first.windows(HOUR_START, 2, rng, frames=10), first.heartbeat(HOUR_START, temperature_c=71.5)])
    second.store(second.windows(HOUR_START, 2, rng, frames=10, model="detector@2.0.0"))
    roll_up_everything()
    hours = WindowRollup.objects.filter(resolution=Resolution.HOUR)
    assert set(hours.values_list("scope", "model_version")) == {
        ("device", "1.0.0"),
        ("device", "2.0.0"),
        ("site", "1.0.0"),
        ("site", "2.0.0"),
        ("fleet", "1.0.0"),
        ("fleet", "2.0.0"),
    }
    fleet = hours.get(scope=Scope.FLEET, model_version="1.0.0")
    assert fleet.frames == sum(
        r.frames
        for r in WindowRollup.objects.filter(resolution=Resolution.MINUTE, scope=Scope.FLEET, model_version="1.0.0")
    )
    assert HeartbeatRollup.objects.filter(resolution=Resolution.HOUR, temperature_c_max=71.5).exists()


def test_a_malformed_window_is_stored_but_left_out_of_the_figures(devices: list[Device]) -> None:
    feed = Feed(devices[0])
    feed.seq = 1
    feed.store([record(1, "window", HOUR_START, {"frames": -3}), *feed.windows(HOUR_START, 1, random.Random(2))])
    roll_up_everything()
    assert TelemetryRecord.objects.count() == 7
    assert WindowRollup.objects.get(resolution="1h", scope="device").windows == 6


@override_settings(TELEMETRY_RAW_RETENTION_DAYS=7, TELEMETRY_ROLLUP_RETENTION_DAYS=90)
def test_retention_deletes_raw_records_after_a_week_and_rollups_after_ninety_days(devices: list[Device]) -> None:
    now = datetime(2026, 11, 23, tzinfo=timezone.utc)
    feed = Feed(devices[0])
    old, recent = now - timedelta(days=8), now - timedelta(days=1)
    feed.store([feed.heartbeat(old), feed.heartbeat(recent)])
    WindowRollup.objects.create(resolution="1h", scope="site", key="plant-a", bucket=now - timedelta(days=91))
    WindowRollup.objects.create(resolution="1h", scope="site", key="plant-a", bucket=now - timedelta(days=89))
    deleted = rollups.apply_retention(now)
    assert deleted["records"] == 1 and deleted["window_rollups"] == 1
    assert list(TelemetryRecord.objects.values_list("recorded_at", flat=True)) == [recent]
    assert WindowRollup.objects.count() == 1


def test_a_batch_floor_is_honoured_by_the_batched_path(devices: list[Device]) -> None:
    feed = Feed(devices[0])
    feed.seq = 9
    assert feed.store([feed.heartbeat(HOUR_START)]) == 0
    assert store(devices[0], batch(feed.heartbeat(HOUR_START), floor=10)) == 11


def shadow(compared: int, agreed: int, latencies_ms: list[float]) -> dict[str, Any]:
    return {
        "model_name": "detector",
        "model_version": "1.1.0",
        "frames": len(latencies_ms),
        "compared": compared,
        "agreed": agreed,
        "latency_ms": histogram.LatencyHistogram.of(latencies_ms).to_wire(),
    }


def test_shadow_agreement_and_latency_add_up_per_device_site_and_fleet(devices: list[Device]) -> None:
    def window(seq: int, at: datetime, shadow_summary: dict[str, Any]) -> Any:
        data = window_data(at, [10.0] * 4, shadow=shadow_summary)
        return record(seq, "window", at + timedelta(seconds=10), data)

    store(devices[0], batch(window(1, HOUR_START, shadow(4, 3, [20.0] * 4))))
    store(devices[0], batch(window(2, HOUR_START + timedelta(seconds=10), shadow(6, 6, [30.0] * 2))))
    store(devices[1], batch(window(1, HOUR_START, shadow(10, 1, [40.0] * 4))))
    roll_up_everything()

    minute = WindowRollup.objects.get(resolution=Resolution.MINUTE, scope=Scope.DEVICE, key=devices[0].device_id)
    assert (minute.shadow_frames, minute.shadow_compared, minute.shadow_agreed) == (6, 10, 9)
    site = Summary()
    site.add_totals(WindowRollup.objects.get(resolution=Resolution.HOUR, scope=Scope.SITE))
    figures = site.figures()
    assert figures["shadow_frames"] == 10 and figures["shadow_agreement"] == pytest.approx(10 / 20)
    assert figures["shadow_latency_p95_ms"] is not None and figures["shadow_latency_p95_ms"] >= 30.0
    plain = Summary()
    plain.add_totals(WindowRollup.objects.filter(scope=Scope.FLEET).first())
    assert plain.shadow_compared == 20

"""Incremental rollups: whatever order records arrive in, the rows equal a rebuild from the raw records."""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from fleet.models import Device, Site
from telemetry import rollup_rebuild
from telemetry.models import HeartbeatRollup, Quarantine, Resolution, Scope, TelemetryRecord, WindowRollup
from telemetry.rollup_rows import MINUTE, floor_to
from tests.telemetry.factories import Feed, roll_up_everything

pytestmark = pytest.mark.django_db

# Ten minutes before an hour's end, so every run below crosses into the next hour.
START = datetime(2026, 11, 20, 9, 50, tzinfo=timezone.utc)


@pytest.fixture
def fleet(site: Site, enroll_device: Callable[..., Any]) -> list[Device]:
    other = Site.objects.create(slug="plant-b", name="Plant B")
    return [enroll_device(site if i % 2 else other, name=f"cam-{i}").device for i in range(5)]


def window_rows() -> dict[tuple[Any, ...], dict[str, Any]]:
    rows = WindowRollup.objects.values()
    return {
        (r["resolution"], r["scope"], r["key"], r["model_name"], r["model_version"], r["bucket"]): _without_id(r)
        for r in rows
    }


def heartbeat_rows() -> dict[tuple[Any, ...], dict[str, Any]]:
    return {(r["resolution"], r["device_id"], r["bucket"]): _without_id(r) for r in HeartbeatRollup.objects.values()}


def _without_id(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k != "id"}


def rebuilt() -> tuple[dict[tuple[Any, ...], dict[str, Any]], dict[tuple[Any, ...], dict[str, Any]]]:
    """The rows a rebuild from every raw record gives, computed on emptied tables."""
    pairs = {(pk, floor_to(at, MINUTE)) for pk, at in TelemetryRecord.objects.values_list("device_id", "recorded_at")}
    WindowRollup.objects.all().delete()
    HeartbeatRollup.objects.all().delete()
    rollup_rebuild.rebuild(pairs)
    return window_rows(), heartbeat_rows()


def assert_same(kept: dict[tuple[Any, ...], dict[str, Any]], whole: dict[tuple[Any, ...], dict[str, Any]]) -> None:
    assert kept.keys() == whole.keys()
    for key, row in whole.items():
        # Sums of floats taken in another order differ in the last bits.
        floats = {name for name, value in row.items() if isinstance(value, float)}
        assert {n: kept[key][n] for n in floats} == pytest.approx({n: row[n] for n in floats}), key
        assert {n: v for n, v in kept[key].items() if n not in floats} == {
            n: v for n, v in row.items() if n not in floats
        }, key


def scattered_records(fleet: list[Device], rng: random.Random) -> list[tuple[Feed, list[Any]]]:
    """Windows of two model versions and heartbeats over 20 minutes for every device, in small shuffled batches."""
    batches = []
    for device in fleet:
        feed = Feed(device)
        records = feed.windows(START, 20, rng, per_minute=3, frames=8)
        records += feed.windows(START, 20, rng, per_minute=1, frames=4, model="detector@2.0.0")
        records += [
            feed.heartbeat(START + timedelta(minutes=m, seconds=7), cpu_percent=rng.uniform(5, 95)) for m in range(20)
        ]
        rng.shuffle(records)
        while records:
            size = rng.randint(1, 12)
            batches.append((feed, records[:size]))
            records = records[size:]
    rng.shuffle(batches)
    return batches


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_rows_kept_by_difference_equal_a_rebuild_whatever_the_arrival_order(fleet: list[Device], seed: int) -> None:
    rng = random.Random(seed)
    batches = scattered_records(fleet, rng)
    for i, (feed, records) in enumerate(batches):
        feed.store(records)
        if rng.random() < 0.3 or i == len(batches) - 1:
            roll_up_everything()
    kept_windows, kept_beats = window_rows(), heartbeat_rows()
    assert {key[:2] for key in kept_windows} == {(r, s) for r in ("1m", "1h") for s in ("device", "site", "fleet")}
    whole_windows, whole_beats = rebuilt()
    assert_same(kept_windows, whole_windows)
    assert_same(kept_beats, whole_beats)


def test_a_late_record_reaches_its_minute_hour_site_and_fleet_rows(fleet: list[Device]) -> None:
    rng = random.Random(7)
    start = START.replace(hour=10, minute=0)
    feeds = [Feed(device) for device in fleet]
    for feed in feeds:
        feed.store(feed.windows(start, 15, rng, frames=5))
    roll_up_everything()
    hour = WindowRollup.objects.get(resolution=Resolution.HOUR, scope=Scope.FLEET, bucket=start)
    assert (hour.devices, hour.frames) == (5, 5 * 15 * 6 * 5)

    # The first device's outbox sends a window of 12 minutes ago (a window's record time is its end).
    late = Feed(fleet[0])
    late.seq = feeds[0].seq
    late.store(late.windows(start + timedelta(minutes=2), 1, rng, per_minute=1, frames=9))
    roll_up_everything()
    hour.refresh_from_db()
    assert (hour.devices, hour.frames) == (5, 5 * 15 * 6 * 5 + 9)
    minute = WindowRollup.objects.get(
        resolution=Resolution.MINUTE, scope=Scope.SITE, key=fleet[0].site.slug, bucket=start + timedelta(minutes=3)
    )
    assert minute.frames == sum(6 * 5 for d in fleet if d.site_id == fleet[0].site_id) + 9
    assert_same(window_rows(), rebuilt()[0])


def test_a_row_that_no_longer_adds_up_is_rebuilt_from_its_sources(
    fleet: list[Device], caplog: pytest.LogCaptureFixture
) -> None:
    rng = random.Random(11)
    feed = Feed(fleet[0])
    feed.store(feed.windows(START, 2, rng, frames=5))
    roll_up_everything()
    # A minute row that claims more than its records hold: taking its difference would drive the hour below zero.
    tampered = WindowRollup.objects.filter(resolution=Resolution.MINUTE, scope=Scope.DEVICE, bucket=START + MINUTE)
    assert tampered.update(frames=10**6) == 1
    feed.store(feed.windows(START, 1, rng, per_minute=1, frames=3))  # ends at START + 1 minute
    roll_up_everything()
    device_hour = WindowRollup.objects.get(resolution=Resolution.HOUR, scope=Scope.DEVICE)
    assert device_hour.frames == 2 * 6 * 5 + 3
    assert not Quarantine.objects.exists()
    assert any("rebuilding them whole" in r.getMessage() for r in caplog.records)
    assert_same(window_rows(), rebuilt()[0])

"""No stored row stops a periodic job: it is quarantined, counted, alerted on, and the job goes on.

Each row here is written straight into the database, around the bridge and
its bounds (an older bridge, a restore, a hand-written fix), since the jobs
must hold whatever the tables contain.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any
from unittest import mock

import pytest
from django.db import connection
from django.utils import timezone

from fleet.models import Device, Site
from registry.models import ModelVersion
from telemetry import alerts, drift, exporter, health, rollups
from telemetry.models import Alert, AlertRule, Cursor, Quarantine, Resolution, Scope, TelemetryRecord, WindowRollup
from telemetry.rollups import CURSOR
from tests.payloads import window_data
from tests.telemetry.factories import Feed, roll_up_everything
from tests.telemetry.helpers import alive, recent_windows
from tests.telemetry.test_drift import reference

pytestmark = pytest.mark.django_db


@pytest.fixture
def devices(site: Site, enroll_device: Callable[..., Any]) -> tuple[Device, Device]:
    return enroll_device(site, name="poisoned").device, enroll_device(site, name="sound").device


def insert_raw(device: Device, seq: int, recorded_at: str, data: str) -> None:
    """A record as SQL writes it: PostgreSQL keeps times and JSON that Python cannot read back."""
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO telemetry_telemetryrecord (device_id, seq, kind, recorded_at, received_at, data) "
            "VALUES (%s, %s, 'window', %s::timestamptz, now(), %s::json)",
            [device.pk, seq, recorded_at, data],
        )


def sound_minute(device: Device) -> datetime:
    """Store a minute of windows and a heartbeat through ingest; returns the minute."""
    minute = timezone.now().replace(second=0, microsecond=0) - timedelta(minutes=3)
    feed = Feed(device)
    feed.store([*feed.windows(minute, 1, random.Random(1), per_minute=6), feed.heartbeat(minute)])
    return minute


def rolled_up_devices() -> set[str]:
    return set(WindowRollup.objects.filter(scope=Scope.DEVICE).values_list("key", flat=True))


def assert_rolled_past_everything() -> None:
    newest = TelemetryRecord.objects.order_by("-received_at").values_list("received_at", flat=True).first()
    assert newest is not None and Cursor.objects.get(name=CURSOR).position >= newest


@pytest.mark.parametrize(
    "recorded_at",
    ["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00"],
    ids=["year-1-at-plus-14", "year-9999-at-minus-14"],
)
def test_a_record_dated_where_python_cannot_read_it_is_quarantined_and_the_rollups_advance(
    devices: tuple[Device, Device], recorded_at: str
) -> None:
    """As found: reading the row back raised DataError (year 1 BC or 10000 in UTC) on every
    run, the run's transaction rolled back, the cursor never moved, and no device of the
    fleet was rolled up again."""
    poisoned, sound = devices
    minute = sound_minute(sound)
    insert_raw(poisoned, 1, recorded_at, json.dumps(window_data(timezone.now(), [10.0], [0.5])))

    roll_up_everything()

    rows = WindowRollup.objects.filter(resolution=Resolution.MINUTE, scope=Scope.DEVICE, bucket=minute)
    assert {r.key: r.windows for r in rows} == {sound.device_id: 5}
    (row,) = Quarantine.objects.all()
    assert (row.source, row.reason, row.device_id) == ("rollups", "unreadable_time", poisoned.pk)
    assert_rolled_past_everything()


def test_a_window_whose_counts_overflow_the_rollup_columns_is_quarantined(devices: tuple[Device, Device]) -> None:
    """Frames of 2^64 - 1 once went into the bigint sum of the minute row and failed every
    run (bigint out of range). The window bound now keeps it out of the figures; before
    this, only a log line said so: no row an operator could see, no alert."""
    poisoned, sound = devices
    minute = sound_minute(sound)
    at = minute + timedelta(seconds=20)
    insert_raw(poisoned, 1, at.isoformat(), json.dumps(window_data(at, frames=2**64 - 1)))

    roll_up_everything()

    assert rolled_up_devices() == {sound.device_id}
    (row,) = Quarantine.objects.all()
    assert (row.reason, row.device_id) == ("schema", poisoned.pk) and "frames" in row.detail
    assert_rolled_past_everything()


def test_data_python_cannot_parse_costs_only_its_devices_minutes(devices: tuple[Device, Device]) -> None:
    """As found: JSON nested past Python's recursion limit raised while the run read its
    rows, failing the whole run (and the next, and the next)."""
    poisoned, sound = devices
    minute = sound_minute(sound)
    insert_raw(poisoned, 1, (minute + timedelta(seconds=5)).isoformat(), '{"a":' + "[" * 5000 + "]" * 5000 + "}")

    roll_up_everything()

    assert rolled_up_devices() == {sound.device_id}
    (row,) = Quarantine.objects.all()
    assert row.device_id == poisoned.pk and row.ref.startswith(f"device_minutes:{poisoned.pk}:")
    assert_rolled_past_everything()


def test_a_quarantined_row_raises_an_alert_on_its_device_and_shows_in_metrics(devices: tuple[Device, Device]) -> None:
    poisoned, _ = devices
    alive(poisoned, timezone.now())
    insert_raw(poisoned, 1, "0001-01-01T00:00:00+14:00", "{}")
    roll_up_everything()

    alerts.evaluate()

    (alert,) = Alert.objects.filter(rule__kind="quarantined")
    assert (alert.device_id, alert.state, alert.value) == (poisoned.pk, "open", 1.0)
    assert 'edgefleet_quarantined_rows{source="rollups"} 1' in exporter.render()


def test_seeing_a_quarantined_row_again_counts_it_on_the_same_row(devices: tuple[Device, Device]) -> None:
    for _ in range(3):
        Quarantine.note("rollups", "telemetry_record:7", "schema", "frames", device_id=devices[0].pk)
    (row,) = Quarantine.objects.all()
    assert row.occurrences == 3 and row.last_at >= row.first_at


def test_retention_deletes_a_quarantined_row_not_seen_for_ninety_days(devices: tuple[Device, Device]) -> None:
    Quarantine.note("rollups", "telemetry_record:1", "schema", device_id=devices[0].pk)
    Quarantine.note("rollups", "telemetry_record:2", "schema", device_id=devices[0].pk)
    Quarantine.objects.filter(ref="telemetry_record:1").update(last_at=timezone.now() - timedelta(days=91))
    assert rollups.apply_retention()["quarantine"] == 1
    assert list(Quarantine.objects.values_list("ref", flat=True)) == ["telemetry_record:2"]


def test_a_reference_drift_cannot_compare_costs_only_its_versions_verdict(
    site: Site, enroll_device: Callable[..., Any]
) -> None:
    """As found: a reference distribution with other bins made psi() raise ValueError,
    which ended the whole alert evaluation: no rule opened or resolved anywhere."""
    now = timezone.now()
    reference()
    odd = ModelVersion.objects.get(version="1.0.0")
    odd.reference_distribution = {"confidence": [1000] * 10, "classes": {}}
    odd.save(update_fields=["reference_distribution"])
    drifting = enroll_device(site, name="odd").device
    recent_windows(drifting, now)
    other = enroll_device(site, name="other").device
    recent_windows(other, now, model="detector@2.0.0")

    results = {r.device_id: r for r in drift.device_drift(now)}

    assert results[drifting.device_id].confidence_psi is None
    assert set(results) == {drifting.device_id, other.device_id}
    (row,) = Quarantine.objects.filter(source="drift")
    assert row.ref == "baseline:detector@1.0.0" and row.reason == "ValueError"


def test_a_rule_that_raises_leaves_the_other_rules_working(site: Site, enroll_device: Callable[..., Any]) -> None:
    """As found: one check raising ended evaluate(): every later rule stopped opening
    and resolving alerts for the whole fleet."""
    device = enroll_device(site).device
    now = timezone.now()
    alive(device, now, temperature_c=95.0, disk_percent=99.0)
    alerts.ensure_rules()
    AlertRule.objects.update(duration_s=0)
    broken = alerts.RuleDefault(1, 0, "warning", "broken", mock.create_autospec(health.offline, side_effect=KeyError))

    with mock.patch.dict(alerts.DEFAULT_RULES, {"cpu_throttled": broken}):
        result = alerts.evaluate(now)

    assert result.failed == 1
    opened = set(Alert.objects.filter(state="open").values_list("rule__kind", flat=True))
    assert {"temperature_high", "disk_full"} <= opened
    assert Quarantine.objects.get(source="alerts").ref == "rule:cpu_throttled"

"""Schema-valid extremes from one device cost that device's messages only.

Times outside the window around the receiving time, integers past their
columns, nesting past what is re-encoded: each is refused at decode with its
reason (or, inside a record's data, stored and left out of every figure), and
the rest of the fleet is stored, rolled up and shown as before.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from django.test import Client

from agent.kernel import protocol
from bridge.process import Bridge
from fleet.models import Device, Site
from telemetry.models import DeviceEvent, Resolution, Scope, TelemetryRecord, WindowRollup
from tests.bridge.helpers import offline_bridge, topic
from tests.payloads import heartbeat_data, window_data
from tests.telemetry.factories import roll_up_everything

pytestmark = pytest.mark.django_db


@pytest.fixture
def bridge() -> Bridge:
    return offline_bridge()


@pytest.fixture
def devices(site: Site, enroll_device: Callable[..., Any]) -> tuple[Device, Device]:
    return enroll_device(site, name="skewed").device, enroll_device(site, name="sound").device


def _telemetry(*records: dict[str, Any]) -> bytes:
    return json.dumps({"v": 1, "type": "telemetry", "records": list(records)}).encode()


def _record(seq: int, kind: str, ts: str, data: dict[str, Any]) -> dict[str, Any]:
    return {"seq": seq, "kind": kind, "ts": ts, "data": data}


def _event(ts: str, **fields: Any) -> bytes:
    return json.dumps({"v": 1, "type": "event", "kind": "model_swap", "ts": ts, **fields}).encode()


def _nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


def test_extreme_messages_are_refused_with_their_reason_and_the_fleet_goes_on(
    bridge: Bridge, devices: tuple[Device, Device], client: Client, admin_user: Any
) -> None:
    skewed, sound = devices
    now = datetime.now(timezone.utc)
    minute = now.replace(second=0, microsecond=0) - timedelta(minutes=2)
    beat = heartbeat_data()
    bad = skewed.device_id
    extremes: list[tuple[str, bytes, str]] = [
        ("telemetry", _telemetry(_record(1, "heartbeat", "0001-01-01T00:00:00+14:00", beat)), "clock_skew"),
        ("telemetry", _telemetry(_record(1, "heartbeat", "9999-12-31T23:59:59-14:00", beat)), "clock_skew"),
        ("telemetry", _telemetry(_record(1, "heartbeat", "9999-12-31T23:59:59+14:00", beat)), "clock_skew"),
        # A far-future heartbeat would stay the newest, and so the device's state, for good.
        ("telemetry", _telemetry(_record(1, "heartbeat", (now + timedelta(days=365)).isoformat(), beat)), "clock_skew"),
        ("telemetry", _telemetry(_record(2**64 - 1, "heartbeat", now.isoformat(), beat)), "schema"),
        ("telemetry", _telemetry(_record(1, "heartbeat", now.isoformat(), _nested(300))), "schema"),
        ("events", _event("0001-01-01T00:00:00+14:00"), "clock_skew"),
        ("events", _event(now.isoformat(), data=_nested(300)), "schema"),
        ("status", b'{"v": true, "type": "status", "state": "online"}', "bad_version"),
        ("status", b'{"v": 1.0, "type": "status", "state": "online"}', "bad_version"),
        (
            "reported",
            json.dumps({"v": 1, "type": "reported", "generation": 2**63, "agent_version": "1"}).encode(),
            "schema",
        ),
        # Inside a record's data: stored (refusing it would block the outbox behind it), left out of the rollups.
        (
            "telemetry",
            _telemetry(_record(1, "window", minute.isoformat(), window_data(minute, frames=2**64 - 1))),
            "ok",
        ),
    ]
    good_window = window_data(minute, [20.0] * 5, [0.9] * 5, ["ok"] * 5)
    items = [(topic(bad, suffix), raw) for suffix, raw, _ in extremes]
    items.append(
        (
            topic(sound.device_id, "telemetry"),
            _telemetry(
                _record(1, "window", (minute + timedelta(seconds=10)).isoformat(), good_window),
                _record(2, "heartbeat", now.isoformat(), heartbeat_data()),
            ),
        )
    )

    verdicts = bridge.handle_many(items)

    assert verdicts == [reason for _, _, reason in extremes] + ["ok"]
    assert bridge.rejected["clock_skew"] == 5 and "internal_error" not in bridge.rejected
    assert list(TelemetryRecord.objects.filter(device=sound).values_list("seq", flat=True).order_by("seq")) == [1, 2]
    skewed.refresh_from_db()
    assert skewed.last_heartbeat == {}

    roll_up_everything()
    rollups = WindowRollup.objects.filter(resolution=Resolution.MINUTE, scope=Scope.DEVICE, bucket=minute)
    assert {r.key: r.frames for r in rollups} == {sound.device_id: 5}

    # The device's clock is right again: its heartbeat is its state.
    later = _telemetry(_record(2, "heartbeat", datetime.now(timezone.utc).isoformat(), heartbeat_data()))
    assert bridge.handle_many([(topic(bad, "telemetry"), later)]) == ["ok"]
    skewed.refresh_from_db()
    assert skewed.last_heartbeat != {}


def test_the_device_page_shows_an_event_as_old_as_the_protocol_accepts(
    bridge: Bridge, devices: tuple[Device, Device], client: Client, admin_user: Any
) -> None:
    device = devices[0]
    oldest = datetime.now(timezone.utc) - protocol.MAX_AGE + timedelta(minutes=1)
    for ts in ("0001-01-01T00:00:00+14:00", oldest.astimezone(timezone(timedelta(hours=14))).isoformat()):
        bridge.handle_many([(topic(device.device_id, "events"), _event(ts))])
    assert list(DeviceEvent.objects.filter(device=device).values_list("at", flat=True)) == [oldest]

    client.force_login(admin_user)
    response = client.get(f"/devices/{device.device_id}/")
    assert response.status_code == 200
    assert "model_swap" in response.content.decode()


def test_the_clock_window_is_the_bridges_to_configure(devices: tuple[Device, Device]) -> None:
    ahead = (datetime.now(timezone.utc) + timedelta(minutes=30)).isoformat()
    raw = _telemetry(_record(1, "heartbeat", ahead, heartbeat_data()))
    device_topic = topic(devices[0].device_id, "telemetry")
    assert offline_bridge().handle_many([(device_topic, raw)]) == ["clock_skew"]
    assert offline_bridge(max_ahead=timedelta(hours=1)).handle_many([(device_topic, raw)]) == ["ok"]

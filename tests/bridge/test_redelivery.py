"""Duplicated and reordered delivery leaves the server in the state a clean delivery leaves it in.

MQTT delivers at least once, and a device that reconnects resends what was
not acknowledged, so copies arrive, and arrive out of order. Two fleets of
devices send the same streams (telemetry windows and heartbeats, reports of
an update through its phases over three generations, events) through the
bridge's own batch path: one in order, once; the other with 5 % or 25 % of
its messages duplicated and as many moved later. What the server stores of
each device must then be the same.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from typing import Any

import pytest

from agent.kernel import protocol
from bridge.process import Bridge
from fleet.models import Device, Site
from telemetry.models import DeviceEvent, TelemetryRecord
from tests.bridge.helpers import offline_bridge, status, topic
from tests.payloads import window_data

pytestmark = pytest.mark.django_db

START = datetime(2026, 12, 1, 8, 0, tzinfo=dt_timezone.utc)
DEVICES = 4
BATCH = 8  # messages the bridge takes off its queue at once


def stream(device_id: str) -> list[tuple[str, bytes]]:
    """What one device sends over a quarter of an hour, in the order it sends it."""
    timed: list[tuple[datetime, str, bytes]] = []
    for batch in range(12):
        records = []
        for seq in range(batch * 5 + 1, batch * 5 + 6):
            at = START + timedelta(seconds=10 * seq)
            if seq % 5:
                data = window_data(at, [10.0 + seq % 7, 12.0], [0.9, 0.4 + (seq % 5) / 10], ["ok", "crack"])
                records.append({"seq": seq, "kind": "window", "ts": at.isoformat(), "data": data})
            else:
                beat = {"agent_version": "0.1.0", "uptime_s": float(seq), "cpu_percent": 20.0 + seq % 9,
                        "memory_percent": 40.0, "disk_percent": 30.0, "disk_free_bytes": 10**9}  # fmt: skip
                records.append({"seq": seq, "kind": "heartbeat", "ts": at.isoformat(), "data": beat})
        message = {"v": 1, "type": "telemetry", "records": records}
        timed.append((START + timedelta(seconds=50 * (batch + 1)), "telemetry", json.dumps(message).encode()))
    for generation in (1, 2, 3):
        for step, phase in enumerate(("downloading", "verifying", "validating", "active")):
            at = START + timedelta(minutes=4 * generation, seconds=step * 5)
            report = protocol.Reported(
                generation=generation,
                model_name="parts",
                model_version=f"1.{generation}.0",
                phase=phase,
                agent_version="0.1.0",
                ts=at,
            )
            timed.append((at, "reported", protocol.encode(report)))
        at = START + timedelta(minutes=4 * generation, seconds=30)
        swap = protocol.Event(kind="model_swap", ts=at, data={"version": f"1.{generation}.0"})
        timed.append((at, "events", protocol.encode(swap)))
    refused = protocol.Event(kind="validation_failed", ts=START + timedelta(minutes=14), data={"reason": "digest"})
    timed.append((START + timedelta(minutes=14), "events", protocol.encode(refused)))
    timed.sort(key=lambda item: item[0])
    return [("status", status("online"))] + [(suffix, payload) for _, suffix, payload in timed]


def disturbed(messages: list[tuple[str, bytes]], share: float, rng: random.Random) -> list[tuple[str, bytes]]:
    """``share`` of the messages delivered twice, and ``share`` moved up to 10 places later."""
    out = list(messages)
    for index in sorted(rng.sample(range(len(messages)), int(len(messages) * share)), reverse=True):
        out.insert(min(len(out), index + rng.randint(1, 10)), messages[index])
    for _ in range(int(len(messages) * share)):
        index = rng.randrange(1, len(out) - 1)  # the first status stays first: it has no time of its own
        moved = out.pop(index)
        out.insert(min(len(out), index + rng.randint(1, 10)), moved)
    return out


def deliver(bridge: Bridge, devices: list[Device], disturb: Callable[[list[Any]], list[Any]]) -> None:
    queue: list[tuple[str, bytes]] = []
    for device in devices:
        queue += [(topic(device.device_id, suffix), payload) for suffix, payload in disturb(stream(device.device_id))]
    # Devices' messages interleave on the broker; the bridge takes them off its queue a batch at a time.
    rng = random.Random(3)
    queue.sort(key=lambda _: rng.random())
    by_device: dict[str, list[tuple[str, bytes]]] = {}
    for item in queue:
        by_device.setdefault(item[0].split("/")[2], []).append(item)
    ordered = [item for items in zip(*by_device.values(), strict=False) for item in items]
    for start in range(0, len(ordered), BATCH):
        verdicts = bridge.handle_many(ordered[start : start + BATCH])
        assert set(verdicts) == {"ok"}, verdicts


def state(device: Device) -> dict[str, Any]:
    """What the server holds of a device, less what names the device itself or the time it arrived."""
    device.refresh_from_db()
    records = TelemetryRecord.objects.filter(device=device).order_by("seq")
    events = DeviceEvent.objects.filter(device=device).order_by("at", "kind")
    return {
        "records": [(r.seq, r.kind, r.recorded_at, json.dumps(r.data, sort_keys=True)) for r in records],
        "reported": device.reported,
        "online": device.online,
        "events": [(e.kind, e.at, e.data) for e in events],
    }


@pytest.mark.parametrize("share", [0.05, 0.25])
def test_duplicated_and_reordered_delivery_leaves_the_state_a_clean_delivery_leaves(
    share: float, site: Site, enroll_device: Callable[..., Any]
) -> None:
    clean = [enroll_device(site, name=f"clean-{i}").device for i in range(DEVICES)]
    noisy = [enroll_device(site, name=f"noisy-{i}").device for i in range(DEVICES)]
    rng = random.Random(int(share * 100))

    deliver(offline_bridge(), clean, lambda messages: messages)
    deliver(offline_bridge(), noisy, lambda messages: disturbed(messages, share, rng))

    for a, b in zip(clean, noisy, strict=True):
        expected, found = state(a), state(b)
        assert len(expected["records"]) == 60 and len(expected["events"]) == 4
        assert expected["reported"]["generation"] == 3 and expected["reported"]["phase"] == "active"
        assert found == expected

"""One path per message kind: a message gets the same verdict alone or among others, and liveness has one writer."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any
from unittest import mock

import pytest
from django.utils import timezone

from fleet.models import Device, DeviceQuerySet, Site
from fleet.tasks import mark_silent_devices_offline
from telemetry.models import DeviceEvent, TelemetryRecord
from tests.bridge.helpers import heartbeat, offline_bridge, published, status, telemetry, topic

pytestmark = pytest.mark.django_db

LIVENESS = ("online", "last_seen", "status_changed_at", "last_heartbeat", "agent_version")


@pytest.fixture
def devices(site: Site, enroll_device: Callable[..., Any]) -> list[Device]:
    return [enroll_device(site, name=f"cam-{i}").device for i in range(3)]


def nested(levels: int) -> dict[str, Any]:
    data: dict[str, Any] = {}
    for _ in range(levels):
        data = {"a": data}
    return data


def window(data: dict[str, Any]) -> bytes:
    record = {"seq": 1, "kind": "window", "ts": timezone.now().isoformat(), "data": data}
    return json.dumps({"v": 1, "type": "telemetry", "records": [record]}).encode()


# Payloads on a device's telemetry topic. Decoding takes JSON nested up to
# 1,024 levels while the store encodes at most 254: the batched path used to
# let that error escape and end the bridge worker, the per-message path
# refused the one message.
PAYLOADS = {
    "good": telemetry(1, 2),
    "data nested past what the store encodes": window(nested(300)),
    "no records": b'{"v":1,"type":"telemetry","records":[]}',
    "a status on the telemetry topic": status("online"),
    "not json": b"{",
}


@pytest.mark.parametrize("payload", PAYLOADS.values(), ids=PAYLOADS.keys())
def test_a_telemetry_message_gets_the_same_verdict_alone_or_among_others(devices: list[Device], payload: bytes) -> None:
    alone, batched, neighbour = devices
    verdict = offline_bridge().handle(topic(alone.device_id, "telemetry"), payload)

    bridge = offline_bridge()
    verdicts = bridge.handle_many(
        [
            (topic(neighbour.device_id, "telemetry"), telemetry(1)),
            (topic(batched.device_id, "telemetry"), payload),
            (topic(neighbour.device_id, "telemetry"), telemetry(2)),
        ]
    )
    assert verdicts == ["ok", verdict, "ok"]
    assert list(TelemetryRecord.objects.filter(device=neighbour).order_by("seq").values_list("seq", flat=True)) == [
        1,
        2,
    ]
    # Each device that had something stored is acknowledged up to its last contiguous seq; a refused one is not.
    expected = {neighbour.device_id: 2}
    if verdict == "ok":
        expected[batched.device_id] = json.loads(payload)["records"][-1]["seq"]
    assert {device_id: ack["seq"] for device_id, ack in published(bridge, "ack")} == expected


@pytest.mark.parametrize("state", ["unknown", "revoked"])
def test_a_device_that_may_not_send_is_refused_the_same_alone_or_among_others(
    devices: list[Device], state: str
) -> None:
    device, neighbour = devices[:2]
    device_id = "dev-nobody" if state == "unknown" else device.device_id
    if state == "revoked":
        Device.objects.filter(pk=device.pk).update(revoked_at=timezone.now())
    for suffix, payload in [("telemetry", telemetry(1)), ("status", status("online"))]:
        alone = offline_bridge().handle(topic(device_id, suffix), payload)
        among = offline_bridge().handle_many(
            [(topic(device_id, suffix), payload), (topic(neighbour.device_id, "telemetry"), telemetry(1))]
        )
        assert [alone, *among] == [f"{state}_device", f"{state}_device", "ok"]
    assert not TelemetryRecord.objects.filter(device=device).exists()


def test_a_last_will_after_a_final_batch_leaves_the_device_offline(devices: list[Device]) -> None:
    device = devices[0]
    bridge = offline_bridge()
    assert bridge.handle(topic(device.device_id, "status"), status("online")) == "ok"
    verdicts = bridge.handle_many(
        [(topic(device.device_id, "telemetry"), telemetry(1)), (topic(device.device_id, "status"), status("offline"))]
    )
    assert verdicts == ["ok", "ok"]
    device.refresh_from_db()
    assert not device.online and device.telemetry_acked_seq == 1


def test_status_then_a_heartbeat_then_silence_takes_a_device_offline(devices: list[Device], settings: Any) -> None:
    device = devices[0]
    bridge = offline_bridge()
    assert bridge.handle(topic(device.device_id, "status"), status("online")) == "ok"
    device.refresh_from_db()
    went_online = device.status_changed_at
    assert device.online and went_online is not None

    beat = heartbeat(1, agent_version="0.3.0", cpu_percent=77.0)
    body = json.dumps({"v": 1, "type": "telemetry", "records": [beat]}).encode()
    assert bridge.handle(topic(device.device_id, "telemetry"), body) == "ok"
    device.refresh_from_db()
    assert device.last_seen is not None and device.last_seen > went_online
    assert device.last_heartbeat["cpu_percent"] == 77.0 and device.agent_version == "0.3.0"
    assert device.status_changed_at == went_online, "a heartbeat is no status change"

    assert mark_silent_devices_offline() == 0, "just heard from"
    settings.DEVICE_OFFLINE_AFTER_S = 0  # silence, without the wait
    assert mark_silent_devices_offline() == 1
    device.refresh_from_db()
    assert not device.online and device.status_changed_at > device.last_seen
    assert device.last_heartbeat["cpu_percent"] == 77.0, "the last heartbeat stays for the operator"


def test_nothing_but_the_fleet_models_liveness_methods_writes_liveness(devices: list[Device]) -> None:
    device = devices[0]
    before = Device.objects.values(*LIVENESS).get(pk=device.pk)
    reported = {"v": 1, "type": "reported", "generation": 0, "agent_version": "9.9.9", "phase": "idle"}
    event = {"v": 1, "type": "event", "kind": "thermal_throttle", "data": {}}
    messages = [
        ("status", json.dumps({"v": 1, "type": "status", "state": "online", "agent_version": "9.9.9"}).encode()),
        ("telemetry", telemetry(1, 2)),
        ("reported", json.dumps(reported).encode()),
        ("events", json.dumps(event).encode()),
    ]
    bridge = offline_bridge()
    with (
        mock.patch.object(Device, "record_presence", autospec=True, return_value=False) as presence,
        mock.patch.object(Device, "record_seen", autospec=True) as seen,
        mock.patch.object(Device, "record_reported", autospec=True) as reports,
        mock.patch.object(DeviceQuerySet, "touch_seen_bulk", autospec=True) as bulk,
        mock.patch.object(DeviceQuerySet, "save_liveness", autospec=True) as saved,
        mock.patch.object(DeviceQuerySet, "mark_silent_offline", autospec=True, return_value=0) as sweep,
    ):
        for suffix, payload in messages:
            assert bridge.handle(topic(device.device_id, suffix), payload) == "ok"
        assert bridge.handle_many([(topic(device.device_id, s), p) for s, p in messages]) == ["ok"] * 4
        mark_silent_devices_offline()
    # With those methods stubbed out, every message was still handled and nothing changed.
    assert Device.objects.values(*LIVENESS).get(pk=device.pk) == before
    # One at a time, the record_* methods; in the batch, the report and the event after the telemetry are
    # applied together and written by save_liveness.
    assert presence.call_count == 4 and seen.call_count == 2 and reports.call_count == 1
    assert bulk.call_count == 2 and saved.call_count == 1 and sweep.call_count == 1
    assert TelemetryRecord.objects.filter(device=device).count() == 2 and DeviceEvent.objects.count() == 2

"""What the bridge does with each message, driven directly (no broker)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from bridge.polling import PendingPublisher
from bridge.process import Bridge
from fleet import desired
from fleet.models import Device, Site
from telemetry.models import DeviceEvent, TelemetryRecord
from tests.bridge.helpers import message_info, now, offline_bridge, status, telemetry, topic

pytestmark = pytest.mark.django_db


@pytest.fixture
def bridge() -> Bridge:
    # Outgoing messages are recorded instead of sent: these tests are about handling.
    return offline_bridge()


@pytest.fixture
def device(site: Site, enroll_device: Callable[..., Any]) -> Device:
    return enroll_device(site).device


def acks(bridge: Bridge) -> list[int]:
    return [json.loads(c.args[1])["seq"] for c in bridge.client.publish.call_args_list if c.args[0].endswith("/ack")]


def test_status_messages_set_presence(bridge: Bridge, device: Device) -> None:
    assert bridge.handle(topic(device.device_id, "status"), status("online")) == "ok"
    device.refresh_from_db()
    assert device.online and device.last_seen is not None
    assert bridge.handle(topic(device.device_id, "status"), status("offline")) == "ok"
    device.refresh_from_db()
    assert not device.online


def test_telemetry_is_stored_once_and_acknowledged(bridge: Bridge, device: Device) -> None:
    assert bridge.handle(topic(device.device_id, "telemetry"), telemetry(1, 2, 3)) == "ok"
    assert bridge.handle(topic(device.device_id, "telemetry"), telemetry(2, 3, 4)) == "ok"
    assert sorted(TelemetryRecord.objects.values_list("seq", flat=True)) == [1, 2, 3, 4]
    assert acks(bridge) == [3, 4]
    device.refresh_from_db()
    assert device.last_heartbeat["cpu_percent"] == 12.5 and device.agent_version == "0.1.0"


def test_the_ack_never_passes_a_gap(bridge: Bridge, device: Device) -> None:
    bridge.handle(topic(device.device_id, "telemetry"), telemetry(1, 2, 5, 6))
    bridge.handle(topic(device.device_id, "telemetry"), telemetry(3, 4))
    assert acks(bridge) == [2, 6]


def test_the_ack_passes_records_the_device_declared_dropped(bridge: Bridge, device: Device) -> None:
    bridge.handle(topic(device.device_id, "telemetry"), telemetry(10, 11, floor=10))
    assert acks(bridge) == [11]


def test_reordered_batches_store_the_same_state_as_a_clean_run(bridge: Bridge, device: Device) -> None:
    for seqs in [(4, 5), (1, 2), (5, 6), (3,), (1, 2)]:
        bridge.handle(topic(device.device_id, "telemetry"), telemetry(*seqs))
    assert list(TelemetryRecord.objects.order_by("seq").values_list("seq", flat=True)) == [1, 2, 3, 4, 5, 6]
    assert acks(bridge)[-1] == 6


def test_reported_state_and_events_are_stored(bridge: Bridge, device: Device) -> None:
    reported = {"v": 1, "type": "reported", "generation": 0, "agent_version": "0.2.0", "phase": "idle"}
    assert bridge.handle(topic(device.device_id, "reported"), json.dumps(reported).encode()) == "ok"
    event = {"v": 1, "type": "event", "kind": "thermal_throttle", "data": {"temp": 83}}
    assert bridge.handle(topic(device.device_id, "events"), json.dumps(event).encode()) == "ok"
    device.refresh_from_db()
    assert device.reported["phase"] == "idle" and device.agent_version == "0.2.0"
    assert DeviceEvent.objects.get().kind == "thermal_throttle"


@pytest.mark.parametrize(
    ("suffix", "payload", "reason"),
    [
        ("status", b"not json", "not_json"),
        ("status", b'{"v":1,"type":"status","state":"asleep"}', "schema"),
        ("telemetry", b'{"v":1,"type":"wat"}', "unknown_type"),
        ("status", b'{"v":9,"type":"status","state":"online"}', "bad_version"),
        ("desired", b'{"v":1,"type":"desired","generation":1}', "wrong_direction"),
        ("status", b"x" * 300_000, "too_large"),
    ],
)
def test_bad_messages_are_counted_by_reason_and_change_nothing(
    bridge: Bridge, device: Device, suffix: str, payload: bytes, reason: str
) -> None:
    assert bridge.handle(topic(device.device_id, suffix), payload) == reason
    assert bridge.rejected[reason] == 1
    device.refresh_from_db()
    assert not device.online


def test_messages_from_unknown_or_revoked_devices_are_refused(bridge: Bridge, device: Device) -> None:
    assert bridge.handle(topic("dev-nobody", "status"), status("online")) == "unknown_device"
    Device.objects.filter(pk=device.pk).update(revoked_at="2024-01-01T00:00:00Z")
    assert bridge.handle(topic(device.device_id, "status"), status("online")) == "revoked_device"


def test_a_malformed_heartbeat_is_kept_but_not_shown_as_state(bridge: Bridge, device: Device) -> None:
    batch = {
        "v": 1,
        "type": "telemetry",
        "records": [{"seq": 1, "kind": "heartbeat", "ts": now(), "data": {"cpu_percent": "hot"}}],
    }
    assert bridge.handle(topic(device.device_id, "telemetry"), json.dumps(batch).encode()) == "ok"
    device.refresh_from_db()
    assert device.last_heartbeat == {} and acks(bridge) == [1]


def test_desired_documents_are_published_retained_once_per_generation(bridge: Bridge, device: Device) -> None:
    desired.issue(device, {"config": {"telemetry_interval_s": 10}})
    bridge.client.publish.return_value = message_info(mqtt.MQTT_ERR_SUCCESS, published=True)
    assert bridge.desired.publish_pending() == 1
    assert bridge.desired.publish_pending() == 0
    (call,) = bridge.client.publish.call_args_list
    assert call.args[0] == topic(device.device_id, "desired") and call.kwargs["retain"] is True
    assert json.loads(call.args[1])["generation"] == 1


def test_a_desired_document_paho_cannot_queue_stays_pending_and_goes_on_the_next_poll(
    bridge: Bridge, device: Device
) -> None:
    # Under a heavy publish load paho refuses to queue (its 16-bit message ids wrap onto ones in flight):
    # this raised out of the publishing thread, which died, and no desired document went out again.
    desired.issue(device, {"config": {"telemetry_interval_s": 10}})
    bridge.client.publish.return_value = message_info(mqtt.MQTT_ERR_QUEUE_SIZE, published=False)
    assert bridge.desired.publish_pending() == 0
    device.refresh_from_db()
    assert device.published_generation < device.desired_generation

    bridge.client.publish.return_value = message_info(mqtt.MQTT_ERR_SUCCESS, published=True)
    assert bridge.desired.publish_pending() == 1
    device.refresh_from_db()
    assert device.published_generation == device.desired_generation


def test_a_publishing_thread_outlives_a_poll_that_raises(bridge: Bridge) -> None:
    polls: list[int] = []
    second = threading.Event()

    class Flaky(PendingPublisher):
        def publish_pending(self) -> int:
            polls.append(1)
            if len(polls) == 1:
                raise RuntimeError("Message publish failed: the connection was lost")
            second.set()
            return 0

    stopping, connected = threading.Event(), threading.Event()
    connected.set()
    thread = threading.Thread(target=Flaky(bridge.client.publish, poll_s=0.01).run, args=(stopping, connected))
    thread.start()
    try:
        assert second.wait(10)
        assert thread.is_alive()
    finally:
        stopping.set()
        thread.join(10)

"""The bridge against a real broker: what devices publish ends up stored, once."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from django.db.models import Sum
from django.utils import timezone

from bridge.process import Bridge, BridgeConfig
from fleet import desired
from fleet.models import Device, Site
from telemetry.models import TelemetryRecord, WindowRollup
from telemetry.rollups import SETTLE, roll_up
from tests.bridge.helpers import status, telemetry, topic
from tests.payloads import window_data


def window_batch(seqs: range) -> bytes:
    now = datetime.now(dt_timezone.utc)
    data = window_data(now, [12.0, 14.0, 30.0], [0.9, 0.8, 0.4])
    records = [{"seq": s, "kind": "window", "ts": now.isoformat(), "data": data} for s in seqs]
    return json.dumps({"v": 1, "type": "telemetry", "records": records}).encode()


pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def start_bridge(url: str, group: str | None) -> Bridge:
    bridge = Bridge(BridgeConfig(url=url, shared_group=group, desired_poll_s=0.2))
    bridge.start()
    assert bridge.wait_connected(10), "bridge did not connect"
    return bridge


def wait_until(predicate: Callable[[], bool], bridges: list[Bridge], timeout: float = 20) -> bool:
    """Re-check ``predicate`` each time any bridge handles a message."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        for bridge in bridges:
            bridge.wait_for(lambda _b: predicate(), timeout=0.05)
    return predicate()


class DeviceClient:
    """A stand-in device speaking the protocol with plain paho."""

    def __init__(self, url: str, device_id: str) -> None:
        from urllib.parse import urlsplit

        parts = urlsplit(url)
        self.device_id = device_id
        self.received: list[tuple[str, dict[str, Any]]] = []
        self.arrived = threading.Condition()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=device_id)
        self.client.on_message = self._on_message
        self.client.connect(parts.hostname or "127.0.0.1", parts.port or 1883)
        self.client.loop_start()
        for suffix in ("ack", "desired"):
            self.client.subscribe(topic(device_id, suffix), qos=1).__class__  # noqa: B018

    def _on_message(self, client: Any, userdata: Any, message: mqtt.MQTTMessage) -> None:
        with self.arrived:
            self.received.append((message.topic.rsplit("/", 1)[1], json.loads(message.payload)))
            self.arrived.notify_all()

    def publish(self, suffix: str, payload: bytes) -> None:
        self.client.publish(topic(self.device_id, suffix), payload, qos=1).wait_for_publish(10)

    def wait_for(self, predicate: Callable[[list[tuple[str, dict[str, Any]]]], bool], timeout: float = 20) -> bool:
        with self.arrived:
            return self.arrived.wait_for(lambda: predicate(self.received), timeout)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def group(bridge_group: str | None) -> str | None:
    return bridge_group


@pytest.fixture
def device(site: Site, enroll_device: Callable[..., Any]) -> Device:
    return enroll_device(site).device


@pytest.fixture
def device_client(mqtt_url: str, device: Device) -> Iterator[DeviceClient]:
    client = DeviceClient(mqtt_url, device.device_id)
    yield client
    client.close()


def test_a_devices_messages_are_stored_and_telemetry_acknowledged(
    mqtt_url: str, group: str | None, device: Device, device_client: DeviceClient
) -> None:
    bridge = start_bridge(mqtt_url, group)
    try:
        device_client.publish("status", status("online"))
        device_client.publish("telemetry", telemetry(1, 2, 3))
        assert device_client.wait_for(lambda got: ("ack", {"v": 1, "type": "ack", "seq": 3}) in got)
        device.refresh_from_db()
        assert device.online and device.last_heartbeat["temperature_c"] == 51.0
    finally:
        bridge.stop()


def test_the_bridge_keeps_working_after_garbage_over_the_wire(
    mqtt_url: str, group: str | None, device: Device, device_client: DeviceClient
) -> None:
    bridge = start_bridge(mqtt_url, group)
    try:
        for junk in [b"\x00\xff", b"{}", b'{"v":1,"type":"status","state":1}', b"[" * 5000]:
            device_client.publish("status", junk)
        device_client.publish("status", status("online"))
        # Retained messages of other devices on the shared broker may add unknown_device rejections.
        expected = {"not_json": 2, "bad_version": 1, "schema": 1}

        def mine(b: Bridge) -> dict[str, int]:
            return {reason: n for reason, n in b.rejected.items() if reason != "unknown_device"}

        assert bridge.wait_for(lambda b: b.accepted["status"] == 1 and mine(b) == expected, timeout=20), (
            dict(bridge.accepted),
            dict(bridge.rejected),
        )
        assert Device.objects.get(pk=device.pk).online
    finally:
        bridge.stop()


def test_desired_state_reaches_the_device_retained(
    mqtt_url: str, group: str | None, device: Device, device_client: DeviceClient
) -> None:
    bridge = start_bridge(mqtt_url, group)
    try:
        desired.issue(device, {"config": {"telemetry_interval_s": 15}})
        assert device_client.wait_for(lambda got: any(s == "desired" for s, _ in got))
        (document,) = [m for s, m in device_client.received if s == "desired"]
        # The site's escalation privacy rides in every signed document (fleet.desired).
        assert document["generation"] == 1
        assert document["config"] == {"telemetry_interval_s": 15, "escalation_privacy": "full"}
    finally:
        bridge.stop()
        # Clear the retained message so the shared broker is left as found.
        device_client.client.publish(topic(device.device_id, "desired"), b"", retain=True).wait_for_publish(5)


def test_two_bridges_on_one_shared_subscription_store_every_record_once(
    mqtt_url: str, group: str | None, device: Device, device_client: DeviceClient, shared_subscriptions: bool
) -> None:
    if not shared_subscriptions:
        pytest.skip("the embedded broker has no shared subscriptions; needs Mosquitto")
    bridges = [start_bridge(mqtt_url, group), start_bridge(mqtt_url, group)]
    try:
        for seq in range(1, 201):
            device_client.publish("telemetry", telemetry(seq))
        # Then batches of window summaries, each sent twice, as an outbox resends after a lost ack.
        for first in range(201, 401, 20):
            payload = window_batch(range(first, first + 20))
            device_client.publish("telemetry", payload)
            device_client.publish("telemetry", payload)
        assert wait_until(lambda: TelemetryRecord.objects.filter(device=device).count() == 400, bridges)
        assert wait_until(lambda: sum(b.accepted["telemetry"] for b in bridges) == 220, bridges)
        # The broker spread the work over both, and nobody stored anything twice.
        assert all(b.accepted["telemetry"] > 0 for b in bridges)
        seqs = list(TelemetryRecord.objects.filter(device=device).values_list("seq", flat=True))
        assert sorted(seqs) == list(range(1, 401))
        assert device_client.wait_for(lambda got: ("ack", {"v": 1, "type": "ack", "seq": 400}) in got)
        roll_up(now=timezone.now() + SETTLE + timedelta(seconds=1))
        frames = WindowRollup.objects.filter(resolution="1h", scope="device").aggregate(n=Sum("frames"))["n"]
        assert frames == 200 * 3, "every window counted once in the rollups"
    finally:
        for bridge in bridges:
            bridge.stop()

"""A bridge with its own client id resumes its session: what it took but never stored comes to it again.

A bridge with its own client id acknowledges a message to the broker only
once it is stored; one that dies holding messages leaves them
unacknowledged, and the broker delivers them again when the bridge returns
under the same client id.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from bridge.process import Bridge, BridgeConfig
from fleet.models import Device, Site
from tests.bridge.helpers import status, topic
from tests.brokers import address, clear_retained

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def device(site: Site, enroll_device: Callable[..., Any], mqtt_url: str) -> Iterator[Device]:
    device = enroll_device(site).device
    yield device
    clear_retained(mqtt_url, device.device_id)


@pytest.fixture
def client_id(mqtt_url: str) -> Iterator[str]:
    """A bridge client id whose persistent session is ended at the broker after the test."""
    client_id = f"test-bridge-{uuid.uuid4().hex[:8]}"
    yield client_id
    # Resuming with a clean session discards the stored one (and its subscriptions) at the broker.
    cleaner = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True)
    cleaner.connect(*address(mqtt_url))
    cleaner.loop_start()
    cleaner.disconnect()
    cleaner.loop_stop()


def publish(url: str, device_id: str, suffix: str, payload: bytes) -> None:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=device_id)
    client.connect(*address(url))
    client.loop_start()
    try:
        client.publish(topic(device_id, suffix), payload, qos=1).wait_for_publish(10)
    finally:
        client.disconnect()
        client.loop_stop()


def test_a_status_taken_but_never_stored_reaches_the_bridge_when_it_returns(
    mqtt_url: str, shared_subscriptions: bool, bridge_group: str | None, device: Device, client_id: str
) -> None:
    if not shared_subscriptions:
        pytest.skip("the embedded broker (amqtt) does not send a resumed session's unacknowledged messages again")
    config = BridgeConfig(url=mqtt_url, shared_group=bridge_group, client_id=client_id, desired_poll_s=60)
    first = Bridge(config)
    assert first.persistent_session
    taken, release = threading.Event(), threading.Event()

    def stalls(items: list[tuple[str, bytes | bytearray]]) -> list[str]:
        # The database is away: the message sits in the bridge, taken from the broker, not stored.
        taken.set()
        release.wait(20)
        return ["storage_error"] * len(items)

    first.handle_many = stalls  # type: ignore[method-assign]
    first.start()
    try:
        assert first.wait_connected(10), "bridge did not connect"
        publish(mqtt_url, device.device_id, "status", status("online"))
        assert taken.wait(20), "the bridge never took the message"
        # It goes away holding the message (the broker sees its connection end, as on a crash).
        first.client.disconnect()
        first._stopping.set()
    finally:
        release.set()
        first.stop()
    device.refresh_from_db()
    assert not device.online

    second = Bridge(config)
    second.start()
    try:
        assert second.wait_connected(10), "bridge did not connect"
        assert second.wait_for(lambda b: b.accepted["status"] >= 1, timeout=20), (
            dict(second.accepted),
            dict(second.rejected),
        )
    finally:
        second.stop()
    device.refresh_from_db()
    assert device.online

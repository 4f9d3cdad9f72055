"""The embedded broker hands a connecting device its own retained messages and never another device's.

amqtt replays retained messages when a client connects for every filter in
the broker's subscription table, whoever holds it: without our guard a
device connecting after others got their retained ``status`` (the bridge's
``+/status`` filter) and ``desired`` (their own filters). These tests wait
for a marker the bridge sends on the device's own topic after it subscribed:
whatever the broker replays on connect or subscribe arrives before it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from agent.kernel import protocol
from fleet import services
from fleet.models import Site
from tests.brokers import RunningBroker, embedded_broker
from tests.fleet.broker.clients import Probe

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

BRIDGE_USERNAME = "edgefleet-bridge"
BRIDGE_PASSWORD = "bridge-pw-for-tests"
OWN_TOPICS = ("desired", "commands", "ack")


def topic(device_id: str, suffix: str) -> str:
    return protocol.topic(device_id, suffix)


class PersistentProbe(Probe):
    """A probe whose session outlives its connection (clean session off)."""

    def __init__(self, url: str, username: str, password: str, *, client_id: str = "") -> None:
        super().__init__(url, username, password)
        client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id or username,
            protocol=mqtt.MQTTv311,
            clean_session=False,
        )
        client.username_pw_set(username, password)
        client.reconnect_delay_set(60, 120)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        client.on_publish = self._on_publish
        self.client = client


@pytest.fixture
def broker(settings: Any) -> Iterator[RunningBroker]:
    settings.BROKER_PROVISIONER = "embedded"
    with embedded_broker(bridge_username=BRIDGE_USERNAME, bridge_password=BRIDGE_PASSWORD) as running:
        yield running


@pytest.fixture
def bridge(broker: RunningBroker, probes: list[Probe]) -> Probe:
    probe = Probe(broker.url, BRIDGE_USERNAME, BRIDGE_PASSWORD, client_id="bridge-under-test")
    probes.append(probe)
    assert not probe.connect().is_failure
    # What the real bridge holds: every device's status, so that filter sits in the broker's table.
    assert not probe.subscribe(f"{protocol.TOPIC_ROOT}/+/status").is_failure
    return probe


@pytest.fixture
def devices(site: Site, enroll_device: Callable[..., services.Enrollment]) -> dict[str, services.Enrollment]:
    return {name: enroll_device(site, f"cam-{name}") for name in ("a", "b", "c")}


@pytest.fixture
def others_retained(
    broker: RunningBroker, bridge: Probe, devices: dict[str, services.Enrollment], probes: list[Probe]
) -> None:
    """A and B are online as the demo has them: subscribed, with retained desired and status."""
    for name in ("a", "b"):
        enrollment = devices[name]
        device_id = enrollment.device.device_id
        bridge.publish(topic(device_id, "desired"), f"desired of {name}".encode(), retain=True)
        probe = Probe(broker.url, device_id, enrollment.secret)
        probes.append(probe)
        assert not probe.connect().is_failure
        for suffix in OWN_TOPICS:
            assert not probe.subscribe(topic(device_id, suffix)).is_failure
        probe.publish(topic(device_id, "status"), f"online {name}".encode(), retain=True)
        assert bridge.wait_for_message(topic(device_id, "status"), f"online {name}".encode())


def connect_and_subscribe(probe: Probe, device_id: str) -> None:
    assert not probe.connect().is_failure
    for suffix in OWN_TOPICS:
        assert not probe.subscribe(topic(device_id, suffix)).is_failure


def foreign_messages(probe: Probe, bridge: Probe, device_id: str, marker: bytes) -> list[str]:
    """The topics, not the device's own, that reached it before the marker on its commands topic."""
    bridge.publish(topic(device_id, "commands"), marker)
    assert probe.wait_for_message(topic(device_id, "commands"), marker)
    own = {topic(device_id, suffix) for suffix in OWN_TOPICS}
    with probe.changed:
        return [t for t, _, _ in probe.messages if t not in own]


def test_a_device_connecting_after_others_gets_none_of_their_retained_messages(
    broker: RunningBroker,
    bridge: Probe,
    devices: dict[str, services.Enrollment],
    others_retained: None,
    probes: list[Probe],
) -> None:
    c = devices["c"].device.device_id
    bridge.publish(topic(c, "desired"), b"desired of c", retain=True)
    device_c = Probe(broker.url, c, devices["c"].secret)
    probes.append(device_c)

    connect_and_subscribe(device_c, c)

    assert foreign_messages(device_c, bridge, c, b"marker") == []
    assert device_c.received(topic(c, "desired")) == [b"desired of c"]


def test_a_device_reconnecting_with_a_clean_session_gets_none_of_their_retained_messages(
    broker: RunningBroker,
    bridge: Probe,
    devices: dict[str, services.Enrollment],
    others_retained: None,
    probes: list[Probe],
) -> None:
    c = devices["c"].device.device_id
    first = Probe(broker.url, c, devices["c"].secret)
    connect_and_subscribe(first, c)
    assert foreign_messages(first, bridge, c, b"first") == []
    first.close()

    again = Probe(broker.url, c, devices["c"].secret)
    probes.append(again)
    connect_and_subscribe(again, c)

    assert foreign_messages(again, bridge, c, b"again") == []


def test_a_device_with_a_persistent_session_gets_none_of_their_retained_messages(
    broker: RunningBroker,
    bridge: Probe,
    devices: dict[str, services.Enrollment],
    others_retained: None,
    probes: list[Probe],
) -> None:
    c = devices["c"].device.device_id
    first = PersistentProbe(broker.url, c, devices["c"].secret)
    connect_and_subscribe(first, c)
    assert foreign_messages(first, bridge, c, b"first") == []
    first.close()

    # Resuming the session: its subscriptions are kept, so this time the
    # broker replays on connect, before any SUBSCRIBE.
    again = PersistentProbe(broker.url, c, devices["c"].secret)
    probes.append(again)
    assert not again.connect().is_failure

    assert foreign_messages(again, bridge, c, b"again") == []


def test_a_device_taking_over_another_devices_session_gets_none_of_its_messages(
    broker: RunningBroker, bridge: Probe, devices: dict[str, services.Enrollment], probes: list[Probe]
) -> None:
    a, c = devices["a"].device.device_id, devices["c"].device.device_id
    owner = PersistentProbe(broker.url, a, devices["a"].secret)
    connect_and_subscribe(owner, a)
    owner.close()
    # Queued for A's session while it is away (QoS 1, clean session off).
    bridge.publish(topic(a, "commands"), b"queued for a")
    bridge.publish(topic(a, "desired"), b"retained for a", retain=True)

    # C names A's client id and asks to resume: refused at CONNECT, A's session untouched.
    intruder = PersistentProbe(broker.url, c, devices["c"].secret, client_id=a)
    probes.append(intruder)
    assert intruder.connect().is_failure
    assert intruder.messages == []

    back = PersistentProbe(broker.url, a, devices["a"].secret)
    probes.append(back)
    assert not back.connect().is_failure
    assert back.wait_for_message(topic(a, "commands"), b"queued for a")

"""Both brokers enforce the ACL rule: a device touches only its own topics; the bridge every device's."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from agent.kernel import protocol
from fleet import services
from fleet.models import Device, Site
from tests.fleet.broker.clients import Probe
from tests.fleet.broker.conftest import BrokerUnderTest

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def topic(device_id: str, suffix: str) -> str:
    return protocol.topic(device_id, suffix)


@pytest.fixture
def bridge(broker: BrokerUnderTest, connect: Callable[..., Probe]) -> Probe:
    probe = connect(broker.bridge_username, broker.bridge_password, client_id="bridge-under-test")
    assert not probe.connect().is_failure
    return probe


@pytest.fixture
def two_devices(site: Site, enroll_device: Callable[..., services.Enrollment]) -> tuple[services.Enrollment, ...]:
    return enroll_device(site, "cam-a"), enroll_device(site, "cam-b")


def connected_device(connect: Callable[..., Probe], enrollment: services.Enrollment) -> Probe:
    probe = connect(enrollment.device.device_id, enrollment.secret)
    reason = probe.connect()
    assert not reason.is_failure, f"device refused: {reason}"
    return probe


def test_a_device_publishes_its_own_telemetry_and_reads_its_own_desired(
    broker: BrokerUnderTest, connect: Callable[..., Probe], bridge: Probe, two_devices: tuple[services.Enrollment, ...]
) -> None:
    a = two_devices[0].device.device_id
    bridge.subscribe(f"{protocol.TOPIC_ROOT}/+/telemetry")
    bridge.publish(topic(a, "desired"), b'{"generation": 1}', retain=True)

    device = connected_device(connect, two_devices[0])
    assert not device.subscribe(topic(a, "desired")).is_failure
    assert device.wait_for_message(topic(a, "desired"), b'{"generation": 1}')

    device.publish(topic(a, "telemetry"), b"mine")
    assert bridge.wait_for_message(topic(a, "telemetry"), b"mine")


def test_a_device_cannot_publish_to_another_devices_topics(
    broker: BrokerUnderTest, connect: Callable[..., Probe], bridge: Probe, two_devices: tuple[services.Enrollment, ...]
) -> None:
    a, b = (e.device.device_id for e in two_devices)
    bridge.subscribe(f"{protocol.TOPIC_ROOT}/#")
    device_a = connected_device(connect, two_devices[0])

    for suffix in protocol.SUFFIXES:
        device_a.publish(topic(b, suffix), b"forged")
    # MQTT 3.1.1 has no way to refuse a PUBLISH: both brokers acknowledge and
    # drop it. One broker handles a client's messages in order, so once A's
    # own message reaches the bridge, a forwarded forgery would be there too.
    device_a.publish(topic(a, "telemetry"), b"sentinel")
    assert bridge.wait_for_message(topic(a, "telemetry"), b"sentinel")
    assert [m for m in bridge.messages if m[0].split("/")[2] == b] == []
    assert device_a.disconnected is None, "a refused publish is dropped, the session stays"


def test_a_device_cannot_publish_to_its_own_cloud_topics(
    broker: BrokerUnderTest, connect: Callable[..., Probe], bridge: Probe, two_devices: tuple[services.Enrollment, ...]
) -> None:
    a = two_devices[0].device.device_id
    bridge.subscribe(f"{protocol.TOPIC_ROOT}/#")
    device_a = connected_device(connect, two_devices[0])

    device_a.publish(topic(a, "desired"), b"forged", retain=True)
    device_a.publish(topic(a, "telemetry"), b"sentinel")
    assert bridge.wait_for_message(topic(a, "telemetry"), b"sentinel")
    assert bridge.received(topic(a, "desired")) == []


def test_a_device_cannot_read_another_devices_desired(
    broker: BrokerUnderTest, connect: Callable[..., Probe], bridge: Probe, two_devices: tuple[services.Enrollment, ...]
) -> None:
    a, b = (e.device.device_id for e in two_devices)
    bridge.publish(topic(b, "desired"), b"secret plan for b", retain=True)
    bridge.publish(topic(a, "desired"), b"plan for a", retain=True)
    device_a = connected_device(connect, two_devices[0])

    for wanted in (topic(b, "desired"), topic(b, "commands"), f"{protocol.TOPIC_ROOT}/+/desired", "#"):
        assert device_a.subscribe(wanted).is_failure, f"{wanted} was granted"
    # Retained messages are sent right after the SUBACK; A's own arrives, B's never.
    assert not device_a.subscribe(topic(a, "desired")).is_failure
    assert device_a.wait_for_message(topic(a, "desired"), b"plan for a")
    assert [m for m in device_a.messages if m[0] != topic(a, "desired")] == []


def test_a_wrong_secret_is_refused_at_connect(
    broker: BrokerUnderTest, connect: Callable[..., Probe], two_devices: tuple[services.Enrollment, ...]
) -> None:
    a, b = two_devices
    assert connect(a.device.device_id, "efd_wrong").connect().is_failure
    assert connect(a.device.device_id, b.secret).connect().is_failure, "B's secret opened A's account"
    assert connect(None, None, client_id="anonymous-probe").connect().is_failure
    assert connect(broker.bridge_username, "not-the-bridge-password").connect().is_failure


def test_a_last_will_on_another_devices_topic_never_reaches_it(
    broker: BrokerUnderTest, connect: Callable[..., Probe], bridge: Probe, two_devices: tuple[services.Enrollment, ...]
) -> None:
    a, b = (e.device.device_id for e in two_devices)
    secret = two_devices[0].secret
    bridge.subscribe(f"{protocol.TOPIC_ROOT}/#")

    def take_over_with_sentinel(payload: bytes) -> None:
        # A second connection with the same client id ends the first session,
        # which makes the broker send its will before this CONNACK.
        second = connect(a, secret)
        assert not second.connect().is_failure
        second.publish(topic(a, "telemetry"), payload)
        assert bridge.wait_for_message(topic(a, "telemetry"), payload)

    forged = connect(a, secret)
    forged.client.will_set(topic(b, "status"), b"forged will", qos=1, retain=True)
    if forged.connect().is_failure:
        assert broker.kind == "embedded"  # it refuses such a will at connect
        return
    # Mosquitto accepts the CONNECT and checks the will's ACL when sending it.
    take_over_with_sentinel(b"sentinel-1")
    assert bridge.received(topic(b, "status")) == []

    # Control: the same take-over does deliver a will on the device's own topic.
    own = connect(a, secret)
    own.client.will_set(topic(a, "status"), b"own will", qos=1)
    assert not own.connect().is_failure
    take_over_with_sentinel(b"sentinel-2")
    assert bridge.received(topic(a, "status")) == [b"own will"]


def test_a_revoked_device_is_cut_off_and_cannot_reconnect(
    broker: BrokerUnderTest, connect: Callable[..., Probe], two_devices: tuple[services.Enrollment, ...]
) -> None:
    a, b = two_devices
    device_a = connected_device(connect, a)
    device_b = connected_device(connect, b)

    # CELERY_TASK_ALWAYS_EAGER: reconcile_broker runs when the revocation commits.
    services.revoke_device(Device.objects.get(pk=a.device.pk), actor=None, reason="stolen")

    assert device_a.wait_disconnected(), "the revoked device's session was not cut off"
    assert connect(a.device.device_id, a.secret, client_id="a-again").connect().is_failure
    assert device_b.disconnected is None, "another device was cut off too"
    assert not device_b.subscribe(topic(b.device.device_id, "desired")).is_failure


def test_a_device_cannot_knock_another_off_the_broker_by_taking_its_client_id(
    broker: BrokerUnderTest, connect: Callable[..., Probe], bridge: Probe, two_devices: tuple[services.Enrollment, ...]
) -> None:
    a, b = two_devices
    a_id, b_id = a.device.device_id, b.device.device_id
    bridge.subscribe(f"{protocol.TOPIC_ROOT}/#")
    device_b = connect(b_id, b.secret)
    device_b.client.will_set(topic(b_id, "status"), b"offline", qos=1, retain=True)
    assert not device_b.connect().is_failure
    assert not device_b.subscribe(topic(b_id, "commands")).is_failure

    # What was seen on Mosquitto before the binding: five take-overs in ten
    # seconds, each ending B's session and publishing its will.
    for attempt in range(5):
        intruder = connect(a_id, a.secret, client_id=b_id)
        reason = intruder.connect()
        assert reason.is_failure and reason.getName() == "Not authorized", (attempt, reason)
    # Without any valid credentials, and under the bridge's client id, likewise.
    assert connect(b_id, "efd_wrong", client_id=b_id).connect().is_failure
    assert connect(a_id, a.secret, client_id="bridge-under-test").connect().is_failure

    # B and the bridge kept their sessions: a round trip each way still works,
    # and by then any will of B's would have reached the bridge.
    bridge.publish(topic(b_id, "commands"), b"still there?")
    assert device_b.wait_for_message(topic(b_id, "commands"), b"still there?")
    device_b.publish(topic(b_id, "telemetry"), b"yes")
    assert bridge.wait_for_message(topic(b_id, "telemetry"), b"yes")
    assert device_b.disconnected is None and bridge.disconnected is None
    assert bridge.received(topic(b_id, "status")) == []

    # Under its own client id, A's credentials work as ever.
    assert not connect(a_id, a.secret).connect().is_failure

"""Every device against every other, on both brokers: no subscription, publish or credential crosses devices.

test_acl_enforcement.py checks each rule on one pair of devices. Here four
devices at two sites (the same names at each) try every topic of the
protocol, every wildcard and every ``$share`` form that would take a share of
the bridge's subscription, and the checks are by behaviour: what a refused
subscription would have delivered never arrives, what a refused publish
would have forged never reaches the bridge or the victim.

MQTT 3.1.1 cannot refuse a PUBLISH, and a non-delivery cannot be awaited. So
each check ends with a sentinel sent after the forbidden traffic on a topic
the observer may read: a broker hands one client its messages in order, so
once the sentinel is there, anything forbidden that was let through would be
there too. No test here sleeps.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable

import pytest
from rest_framework.test import APIClient

from agent.kernel import protocol
from fleet import services
from fleet.models import Device, EnrollmentToken, Site
from tests.fleet.broker.clients import Probe
from tests.fleet.broker.conftest import BrokerUnderTest

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

ROOT = protocol.TOPIC_ROOT
# The shared-subscription group production bridges join (MQTT_SHARED_GROUP).
GROUP = "edgefleet-bridge"
DYNSEC_CONTROL = "$CONTROL/dynamic-security/v1"


def topic(device_id: str, suffix: str) -> str:
    return protocol.topic(device_id, suffix)


def payload(device_id: str, suffix: str) -> bytes:
    return f"{suffix} of {device_id}".encode()


def forbidden_filters(attacker: str, others: Iterable[str]) -> list[str]:
    """What ``attacker`` must not be granted: anything but its own cloud-to-device topics, named exactly."""
    filters: list[str] = []
    for victim in others:
        filters += [topic(victim, suffix) for suffix in protocol.SUFFIXES]
        filters += [f"{ROOT}/{victim}/#", f"{ROOT}/{victim}/+"]
    # Its own uplink: reading it is no leak, but under $share it would take a share of the bridge's.
    filters += [topic(attacker, suffix) for suffix in protocol.DEVICE_TO_CLOUD]
    filters += [f"{ROOT}/{attacker}/#", f"{ROOT}/{attacker}/+"]
    filters += ["#", "edgefleet/#", f"{ROOT}/#", "+/#", "+/+/+", "+/+/+/+", "+/+/+/desired"]
    filters += [f"{ROOT}/+/{suffix}" for suffix in protocol.SUFFIXES]
    filters += ["$SYS/#", "$SYS/broker/clients/connected", "$CONTROL/#", f"{DYNSEC_CONTROL}/response"]
    # The bridge's own shared filters (bridge.process subscribes exactly these), and wider ones in its group.
    filters += [f"$share/{GROUP}/{ROOT}/+/{suffix}" for suffix in protocol.DEVICE_TO_CLOUD]
    filters += [f"$share/{GROUP}/#", f"$share/{GROUP}/{ROOT}/#", f"$share/any/{ROOT}/#"]
    filters += [f"$share/{GROUP}/{topic(attacker, suffix)}" for suffix in protocol.DEVICE_TO_CLOUD]
    return filters


@pytest.fixture
def refused(connect: Callable[..., Probe]) -> Callable[..., bool]:
    """Whether the broker refuses these credentials at connect."""

    def attempt(username: str | None, password: str | None, *, client_id: str = "") -> bool:
        probe = connect(username, password, client_id=client_id)
        failed = bool(probe.connect().is_failure)
        if failed:
            # Now, not at teardown: paho's thread then ends by itself instead of waiting out its reconnect delay.
            probe.client.disconnect()
        return failed

    return attempt


@pytest.fixture
def bridge(broker: BrokerUnderTest, connect: Callable[..., Probe]) -> Probe:
    """A privileged observer: the bridge account, subscribed to every device's every topic."""
    probe = connect(broker.bridge_username, broker.bridge_password, client_id="bridge-observer")
    assert not probe.connect().is_failure
    assert not probe.subscribe(f"{ROOT}/#").is_failure
    return probe


@pytest.fixture
def fleet(site: Site, other_site: Site, enroll_device: Callable[..., services.Enrollment]) -> list[services.Enrollment]:
    return [enroll_device(s, name) for s in (site, other_site) for name in ("cam-1", "cam-2")]


def connect_all(connect: Callable[..., Probe], fleet: list[services.Enrollment]) -> dict[str, Probe]:
    """Each device under its own credentials, subscribed to its own cloud-to-device topics."""
    devices: dict[str, Probe] = {}
    for enrollment in fleet:
        device_id = enrollment.device.device_id
        probe = connect(device_id, enrollment.secret)
        assert not probe.connect().is_failure, f"{device_id} refused"
        for suffix in protocol.CLOUD_TO_DEVICE:
            assert not probe.subscribe(topic(device_id, suffix)).is_failure, f"{device_id} may not read its {suffix}"
        devices[device_id] = probe
    return devices


def seen(probe: Probe) -> set[tuple[str, bytes]]:
    with probe.changed:
        return {(t, p) for t, p, _ in probe.messages}


def send_sentinels(bridge: Probe, devices: dict[str, Probe]) -> None:
    """The bridge's last word to every device; returns once each has it."""
    for device_id in devices:
        bridge.publish(topic(device_id, "commands"), b"sentinel")
    for device_id, probe in devices.items():
        assert probe.wait_for_message(topic(device_id, "commands"), b"sentinel"), f"{device_id} missed its sentinel"


def test_no_device_can_subscribe_to_another_devices_topics_to_wildcards_or_to_the_bridges_share(
    broker: BrokerUnderTest, connect: Callable[..., Probe], bridge: Probe, fleet: list[services.Enrollment]
) -> None:
    ids = [e.device.device_id for e in fleet]
    shared: Probe | None = None
    if broker.kind == "mosquitto":  # amqtt has no shared subscriptions
        shared = connect(broker.bridge_username, broker.bridge_password, client_id="bridge-shared")
        assert not shared.connect().is_failure
        for suffix in protocol.DEVICE_TO_CLOUD:
            assert not shared.subscribe(f"$share/{GROUP}/{ROOT}/+/{suffix}").is_failure
    # Retained state as in production, there before anyone subscribes: desired from the cloud, status from the device.
    for device_id in ids:
        bridge.publish(topic(device_id, "desired"), payload(device_id, "retained desired"), retain=True)
    devices = connect_all(connect, fleet)
    for device_id, probe in devices.items():
        probe.publish(topic(device_id, "status"), payload(device_id, "retained status"), retain=True)

    granted = [
        (attacker, wanted)
        for attacker, probe in devices.items()
        for wanted in forbidden_filters(attacker, [i for i in ids if i != attacker])
        if not probe.subscribe(wanted).is_failure
    ]
    assert granted == []
    # One SUBSCRIBE naming several filters: each is judged on its own.
    a, b = ids[0], ids[2]
    _, mid = devices[a].client.subscribe([(topic(a, "ack"), 1), (topic(b, "desired"), 1), ("#", 1)])
    assert devices[a].wait(lambda: mid in devices[a].subacks)
    assert [r.is_failure for r in devices[a].subacks[mid]] == [False, True, True]

    # Live traffic both ways on every topic of every device.
    for device_id, probe in devices.items():
        for suffix in protocol.DEVICE_TO_CLOUD:
            probe.publish(topic(device_id, suffix), payload(device_id, suffix))
    uplink = {(topic(d, s), payload(d, s)) for d in ids for s in protocol.DEVICE_TO_CLOUD}
    assert bridge.wait(lambda: uplink <= seen(bridge)), "the bridge missed device messages"
    if shared is not None:
        # Had a device joined the bridge's group, it would have taken some of these.
        assert shared.wait(lambda: uplink <= seen(shared)), uplink - seen(shared)
    for device_id in ids:
        for suffix in protocol.CLOUD_TO_DEVICE:
            bridge.publish(topic(device_id, suffix), payload(device_id, suffix))
    send_sentinels(bridge, devices)

    for device_id, probe in devices.items():
        own = {(topic(device_id, s), payload(device_id, s)) for s in protocol.CLOUD_TO_DEVICE}
        own |= {(topic(device_id, "desired"), payload(device_id, "retained desired"))}
        own |= {(topic(device_id, "commands"), b"sentinel")}
        assert seen(probe) == own, f"{device_id} received {seen(probe) - own}"


def test_no_device_can_forge_a_message_for_another_device_from_the_cloud_or_to_the_broker(
    broker: BrokerUnderTest,
    connect: Callable[..., Probe],
    refused: Callable[..., bool],
    bridge: Probe,
    fleet: list[services.Enrollment],
) -> None:
    ids = [e.device.device_id for e in fleet]
    for device_id in ids:
        bridge.publish(topic(device_id, "desired"), payload(device_id, "retained desired"), retain=True)
    devices = connect_all(connect, fleet)
    for device_id, probe in devices.items():
        probe.publish(topic(device_id, "status"), payload(device_id, "retained status"), retain=True)

    for attacker, probe in devices.items():
        forged = f"forged by {attacker}".encode()
        targets = [topic(victim, suffix) for victim in ids if victim != attacker for suffix in protocol.SUFFIXES]
        targets += [topic(attacker, suffix) for suffix in protocol.CLOUD_TO_DEVICE]
        for target in targets:
            # Retained, so a forgery let through would also replace the genuine retained state.
            probe.publish(target, forged, retain=True)
        probe.publish(topic(attacker, "telemetry"), b"sentinel")
    for attacker, probe in devices.items():
        assert bridge.wait_for_message(topic(attacker, "telemetry"), b"sentinel")
        assert probe.disconnected is None, "a refused publish is dropped, the session stays"
    send_sentinels(bridge, devices)

    assert [m for m in bridge.messages if m[1].startswith(b"forged")] == []
    for device_id, probe in devices.items():
        assert [m for m in probe.messages if m[1].startswith(b"forged")] == [], device_id

    # The retained state is still the genuine one, as a device connecting now would read it.
    late = connect(broker.bridge_username, broker.bridge_password, client_id="bridge-late")
    assert not late.connect().is_failure
    assert not late.subscribe(f"{ROOT}/#").is_failure
    retained = {(topic(d, "desired"), payload(d, "retained desired")) for d in ids}
    retained |= {(topic(d, "status"), payload(d, "retained status")) for d in ids}
    late.publish(topic(ids[0], "commands"), b"sentinel")
    assert late.wait_for_message(topic(ids[0], "commands"), b"sentinel")
    assert seen(late) == retained | {(topic(ids[0], "commands"), b"sentinel")}

    # Mosquitto's dynamic-security plugin takes its commands on a topic: a device must not reach it.
    device_id = ids[0]
    attacker = devices[device_id]
    commands = {
        "commands": [
            {"command": "addClientRole", "username": device_id, "rolename": "edgefleet-bridge"},
            {"command": "createClient", "username": "intruder", "password": "intruder-pw"},
            {"command": "addClientRole", "username": "intruder", "rolename": "edgefleet-bridge"},
        ]
    }
    info = attacker.client.publish(DYNSEC_CONTROL, json.dumps(commands).encode(), qos=1)
    # Mosquitto drops the PUBLISH and acknowledges it; amqtt closes the connection on any "$" topic.
    assert attacker.wait(lambda: info.mid in attacker.pubacks or attacker.disconnected is not None)
    attacker.close()

    # A second connection (the broker handled the first one's packets before it) has no more rights.
    again = connect(device_id, fleet[0].secret)
    assert not again.connect().is_failure
    assert again.subscribe(f"{ROOT}/#").is_failure
    assert again.subscribe(f"$share/{GROUP}/{ROOT}/+/telemetry").is_failure
    assert refused("intruder", "intruder-pw")


def test_only_a_devices_own_live_secret_under_its_own_client_id_opens_its_account(
    broker: BrokerUnderTest,
    connect: Callable[..., Probe],
    refused: Callable[..., bool],
    bridge: Probe,
    site: Site,
    fleet: list[services.Enrollment],
    enroll_device: Callable[..., services.Enrollment],
) -> None:
    ids = [e.device.device_id for e in fleet]
    a, b = fleet[0], fleet[2]  # different sites
    attempts: list[tuple[str, str | None, str | None, str]] = [
        ("forged id and secret", "dev-00000000deadbeef", "efd_forged", ""),
        ("unknown id, a real secret", "dev-00000000deadbeef", a.secret, ""),
        ("empty password", a.device.device_id, "", ""),
        ("no password", a.device.device_id, None, ""),
        ("the bridge's name, a device's secret", broker.bridge_username, a.secret, "bridge-probe"),
        ("a device's name, the bridge's password", a.device.device_id, broker.bridge_password, ""),
        ("own secret, a suffixed client id", a.device.device_id, a.secret, f"{a.device.device_id}-2"),
        ("own secret, an upper-case client id", a.device.device_id, a.secret, a.device.device_id.upper()),
        ("own secret, another site's device's client id", a.device.device_id, a.secret, b.device.device_id),
    ]
    # Every device's id with every other device's secret, across sites too.
    attempts += [
        (f"{i} with the secret of {o.device.device_id}", i, o.secret, "")
        for i in ids
        for o in fleet
        if o.device.device_id != i
    ]
    opened = [name for name, user, password, client_id in attempts if not refused(user, password, client_id=client_id)]
    assert opened == []

    # Control: each under its own id, with its own secret.
    devices = connect_all(connect, fleet)

    # Revoked, a device's secret opens nothing any more, not even the account of the device that replaces it.
    revoked, kept = fleet[0], fleet[1:]
    services.revoke_device(Device.objects.get(pk=revoked.device.pk), actor=None, reason="stolen")
    assert devices[revoked.device.device_id].wait_disconnected()
    devices[revoked.device.device_id].client.disconnect()  # no reconnect to wait out at teardown

    # Its name is free again: the replacement has a new id and a new secret.
    replacement = enroll_device(site, revoked.device.name)
    old_id, new_id = revoked.device.device_id, replacement.device.device_id
    assert old_id != new_id
    for user, password in ((old_id, revoked.secret), (new_id, revoked.secret), (old_id, replacement.secret)):
        assert refused(user, password), (user, password[:8])
    assert not connect(new_id, replacement.secret).connect().is_failure

    # The others kept their sessions.
    survivors = {e.device.device_id: devices[e.device.device_id] for e in kept}
    send_sentinels(bridge, survivors)
    assert [i for i, probe in survivors.items() if probe.disconnected is not None] == []


# No broker here: the refusal comes before the provisioner, so a rolled-back transaction will do.
@pytest.mark.django_db
def test_an_expired_or_revoked_enrollment_token_enrolls_nothing_and_answers_in_the_one_error_shape(
    admin_client: APIClient, anonymous: APIClient, site: Site
) -> None:
    expired_row, expired = EnrollmentToken.issue(site)
    EnrollmentToken.objects.filter(pk=expired_row.pk).update(expires_at=expired_row.created_at)
    revoked_row, revoked = EnrollmentToken.issue(site)
    revoke = admin_client.post(
        f"/api/v1/enrollment-tokens/{revoked_row.pk}/revoke/", {"reason": "leaked"}, format="json"
    )
    assert revoke.status_code == 200

    answers = {
        name: anonymous.post("/api/v1/enroll", {"token": token, "name": f"cam-{name}"}, format="json")
        for name, token in (("expired", expired), ("revoked", revoked), ("unknown", "efe_never-issued"))
    }

    for answer in answers.values():
        assert answer["Content-Type"] == "application/json"
        body = answer.json()
        assert set(body) == {"code", "detail"} and isinstance(body["detail"], str) and body["detail"]
    assert (answers["expired"].status_code, answers["expired"].json()["code"]) == (410, "token_expired")
    # A revoked token answers as one never issued: the refusal tells a finder nothing about it.
    assert (answers["revoked"].status_code, answers["revoked"].json()) == (
        answers["unknown"].status_code,
        answers["unknown"].json(),
    )
    assert answers["revoked"].status_code == 401 and answers["revoked"].json()["code"] == "unknown_token"
    assert not Device.objects.exists()
    assert not EnrollmentToken.objects.filter(used_at__isnull=False).exists()

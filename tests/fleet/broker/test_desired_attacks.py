"""Replay and freeze, tried with broker write access against real agents, the real bridge and each broker.

The attacker holds the bridge's broker account (the one account that may
write every device's ``desired`` topic): it republishes genuine signed
documents where and when they do not belong, or withholds new ones. What it
gets is a refusal the control plane hears about, never a device that obeys.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.utils import timezone

from agent.kernel import protocol
from agent.runtime import Runtime
from bridge.process import Bridge
from fleet import desired, services
from fleet.models import Device, Site
from telemetry import alerts
from telemetry.models import Alert, DeviceEvent
from tests.agent.helpers import make_agent_config
from tests.fleet.broker.clients import Probe
from tests.fleet.broker.conftest import BrokerUnderTest

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

TIMEOUT = 20


@pytest.fixture
def start_agent(broker: BrokerUnderTest, tmp_path: Path) -> Iterator[Callable[[services.Enrollment], Runtime]]:
    """Run the real agent run loop in a thread, enrolled as ``enrollment``."""
    running: list[tuple[Runtime, threading.Thread]] = []

    def start(enrollment: services.Enrollment) -> Runtime:
        device_id = enrollment.device.device_id
        config = make_agent_config(
            tmp_path / device_id,
            mqtt_url=broker.url,
            device_id=device_id,
            secret=enrollment.secret,
            trust=enrollment.trust_store,
            agent={"heartbeat_interval_s": 3600},
        )
        runtime = Runtime(config)
        runtime.desired_state.expiry_check_s = 0.1
        thread = threading.Thread(target=runtime.run, name=f"agent-{device_id}")
        thread.start()
        assert runtime.link.subscribed.wait(10), "the agent was refused"
        running.append((runtime, thread))
        return runtime

    yield start
    for runtime, thread in running:
        runtime.stop()
        thread.join(30)


def attacker(broker: BrokerUnderTest, probes: list[Probe]) -> Probe:
    probe = Probe(broker.url, broker.bridge_username, broker.bridge_password, client_id="edgefleet-bridge-attacker")
    probes.append(probe)
    assert probe.connect().value == 0
    return probe


def replay(probe: Probe, device: Device, document: dict[str, Any]) -> None:
    """Publish a genuine signed document, retained, on ``device``'s desired topic."""
    payload = protocol.encode(protocol.Desired.model_validate(document))
    probe.client.publish(protocol.topic(device.device_id, "desired"), payload, qos=1, retain=True).wait_for_publish(5)


def reports(device: Device, running_bridge: Bridge, predicate: Callable[[dict[str, Any]], bool]) -> bool:
    """Wait until what the control plane stored of ``device``'s reported state satisfies ``predicate``."""

    def check(_bridge: Bridge) -> bool:
        return predicate(Device.objects.get(pk=device.pk).reported or {})

    return check(running_bridge) or running_bridge.wait_for(check, TIMEOUT)


def refusal(device: Device, running_bridge: Bridge, reason: str) -> bool:
    def check(_bridge: Bridge) -> bool:
        return DeviceEvent.objects.filter(device=device, kind="desired_rejected", data__reason=reason).exists()

    return check(running_bridge) or running_bridge.wait_for(check, TIMEOUT)


def test_a_document_replayed_on_another_device_or_from_the_past_is_refused_and_reported(
    broker: BrokerUnderTest,
    running_bridge: Bridge,
    site: Site,
    enroll_device: Callable[..., services.Enrollment],
    start_agent: Callable[[services.Enrollment], Runtime],
    probes: list[Probe],
) -> None:
    one, two = enroll_device(site, "cam-1"), enroll_device(site, "cam-2")
    victim = two.device
    desired.issue(one.device, {"config": {"telemetry_interval_s": 5}})
    desired.issue(victim, {"config": {"telemetry_interval_s": 30}})
    desired.issue(victim, {"config": {"telemetry_interval_s": 40}})
    agent = start_agent(two)
    start_agent(one)
    assert reports(victim, running_bridge, lambda r: r.get("generation") == 2)
    first = Device.objects.get(pk=one.device.pk).desired_document
    stale = {**Device.objects.get(pk=victim.pk).desired_document}

    evil = attacker(broker, probes)
    replay(evil, victim, first)  # another device's genuine document, generation 1
    assert refusal(victim, running_bridge, "wrong_device")

    desired.issue(victim, {"config": {"telemetry_interval_s": 50}})
    assert reports(victim, running_bridge, lambda r: r.get("generation") == 3)
    replay(evil, victim, stale)  # the device's own older document
    assert refusal(victim, running_bridge, "stale")

    # Nothing the attacker sent moved the device or what the control plane shows of it.
    assert Device.objects.get(pk=victim.pk).reported["generation"] == 3
    current = agent.desired_state.current
    assert current is not None and current.generation == 3 and current.config.telemetry_interval_s == 50

    # No freeze: the genuine next document still goes through.
    desired.issue(victim, {"config": {"telemetry_interval_s": 60}})
    assert reports(victim, running_bridge, lambda r: r.get("generation") == 4)


def test_a_frozen_device_keeps_serving_says_so_and_an_alert_opens_until_a_fresh_document_arrives(
    broker: BrokerUnderTest,
    running_bridge: Bridge,
    site: Site,
    enroll_device: Callable[..., services.Enrollment],
    start_agent: Callable[[services.Enrollment], Runtime],
) -> None:
    enrollment = enroll_device(site, "cam-frozen")
    device = enrollment.device
    # A document with two seconds left: the re-issue that should follow is withheld.
    issued = timezone.now() - desired.lifetime() + timedelta(seconds=2)
    desired.issue(device, {"config": {"telemetry_interval_s": 15}}, now=issued)
    agent = start_agent(enrollment)
    assert reports(device, running_bridge, lambda r: r.get("generation") == 1)

    assert reports(device, running_bridge, lambda r: r.get("desired_expired") is True)
    assert DeviceEvent.objects.filter(device=device, kind="desired_expired").count() == 1
    current = agent.desired_state.current
    assert current is not None and current.generation == 1, "the device keeps serving with what it has"
    alerts.evaluate()
    assert Alert.objects.filter(device=device, rule__kind="desired_expired", resolved_at__isnull=True).exists()

    assert desired.reissue_expiring() == 1
    assert reports(device, running_bridge, lambda r: r.get("generation") == 2 and r.get("desired_expired") is False)
    alerts.evaluate()
    assert not Alert.objects.filter(device=device, rule__kind="desired_expired", resolved_at__isnull=True).exists()

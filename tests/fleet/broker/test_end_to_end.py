"""The real agent link and the real bridge, through each broker's ACLs: presence and revocation."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest

from agent.config import MqttSettings
from agent.mqtt import Link
from bridge.process import Bridge
from fleet import services
from fleet.models import Device, Site
from tests.fleet.broker.clients import Probe
from tests.fleet.broker.conftest import BrokerUnderTest

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def online(device_pk: int) -> Callable[[Bridge], bool]:
    return lambda _bridge: Device.objects.filter(pk=device_pk, online=True).exists()


def test_an_enrolled_agent_shows_online_through_the_bridge_and_a_revoked_one_is_cut_off(
    broker: BrokerUnderTest, running_bridge: Bridge, site: Site, enroll_device: Callable[..., services.Enrollment]
) -> None:
    enrollment = enroll_device(site, "cam-e2e")
    link = Link(
        MqttSettings(url=broker.url, reconnect_min_s=30, reconnect_max_s=60),
        device_id=enrollment.device.device_id,
        secret=enrollment.secret,
        on_message=lambda suffix, message: None,
    )
    cut_off = threading.Event()
    agent_on_disconnect = link.client.on_disconnect

    def on_disconnect(*args: Any) -> None:
        agent_on_disconnect(*args)
        cut_off.set()

    link.client.on_disconnect = on_disconnect
    link.start()
    try:
        assert link.connected.wait(10), "the agent was refused"
        assert running_bridge.wait_for(online(enrollment.device.pk), timeout=20), (
            "the bridge never saw the agent's status"
        )

        services.revoke_device(Device.objects.get(pk=enrollment.device.pk), actor=None, reason="decommissioned")

        assert cut_off.wait(10), "the revoked agent stayed connected"
        assert not link.connected.is_set()
    finally:
        link.stop()


def test_an_agent_stays_online_while_another_device_tries_its_client_id(
    broker: BrokerUnderTest, running_bridge: Bridge, site: Site, enroll_device: Callable[..., services.Enrollment]
) -> None:
    victim, other = enroll_device(site, "cam-victim"), enroll_device(site, "cam-other")
    links = {
        enrollment.device.device_id: Link(
            MqttSettings(url=broker.url, reconnect_min_s=30, reconnect_max_s=60),
            device_id=enrollment.device.device_id,
            secret=enrollment.secret,
            on_message=lambda suffix, message: None,
        )
        for enrollment in (victim, other)
    }
    victim_link = links[victim.device.device_id]
    dropped = threading.Event()
    agent_on_disconnect = victim_link.client.on_disconnect

    def on_disconnect(*args: Any) -> None:
        agent_on_disconnect(*args)
        dropped.set()

    victim_link.client.on_disconnect = on_disconnect
    victim_link.start()
    try:
        assert victim_link.connected.wait(10), "the agent was refused"
        assert running_bridge.wait_for(online(victim.device.pk), timeout=20)

        # The other device's credentials under the victim's client id, five times.
        for _ in range(5):
            intruder = Probe(broker.url, other.device.device_id, other.secret, client_id=victim.device.device_id)
            try:
                assert intruder.connect().is_failure
            finally:
                intruder.close()

        # The other agent's own status goes through the same bridge after any
        # will of the victim's would have: once it shows, the victim's would too.
        links[other.device.device_id].start()
        assert running_bridge.wait_for(online(other.device.pk), timeout=20)
        assert not dropped.is_set(), "the victim's agent was disconnected"
        assert Device.objects.get(pk=victim.device.pk).online
    finally:
        for link in links.values():
            link.stop()

"""The broker under test: a private Mosquitto with dynamic security, or the embedded broker."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bridge.process import Bridge, BridgeConfig
from fleet.broker import provisioner
from fleet.broker.dynsec import DynsecProvisioner
from tests.brokers import RunningBroker, embedded_broker, mosquitto_with_dynsec
from tests.fleet.broker.clients import Probe

BRIDGE_USERNAME = "edgefleet-bridge"
BRIDGE_PASSWORD = "bridge-pw-for-tests"


@dataclass(frozen=True)
class BrokerUnderTest:
    kind: str
    url: str
    bridge_username: str = BRIDGE_USERNAME
    bridge_password: str = BRIDGE_PASSWORD


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[RunningBroker]:
    with mosquitto_with_dynsec(tmp_path) as running:
        yield running


@pytest.fixture
def dynsec_settings(settings: Any, mosquitto: RunningBroker) -> Iterator[DynsecProvisioner]:
    """Enrollment and revocation drive the private Mosquitto, as in production."""
    settings.BROKER_PROVISIONER = "dynsec"
    settings.MQTT_URL = mosquitto.url
    settings.BROKER_ADMIN_USERNAME = mosquitto.admin_username
    settings.BROKER_ADMIN_PASSWORD = mosquitto.admin_password
    settings.BROKER_ADMIN_TIMEOUT_S = 5
    provisioner.cache_clear()
    yield DynsecProvisioner.from_settings()
    provisioner.cache_clear()


@pytest.fixture(params=["mosquitto", "embedded"])
def broker(request: pytest.FixtureRequest, settings: Any) -> Iterator[BrokerUnderTest]:
    if request.param == "mosquitto":
        admin: DynsecProvisioner = request.getfixturevalue("dynsec_settings")
        admin.ensure_bridge(BRIDGE_USERNAME, BRIDGE_PASSWORD)
        yield BrokerUnderTest("mosquitto", admin.url)
        return
    # The embedded broker reads the database itself: nothing to provision.
    settings.BROKER_PROVISIONER = "embedded"
    provisioner.cache_clear()
    with embedded_broker(bridge_username=BRIDGE_USERNAME, bridge_password=BRIDGE_PASSWORD, recheck_s=0.2) as running:
        yield BrokerUnderTest("embedded", running.url)
    provisioner.cache_clear()


@pytest.fixture
def probes() -> Iterator[list[Probe]]:
    """MQTT clients a test opened; closed after it."""
    opened: list[Probe] = []
    yield opened
    for probe in opened:
        probe.close()


@pytest.fixture
def running_bridge(broker: BrokerUnderTest) -> Iterator[Bridge]:
    """The real bridge on the broker under test, with the bridge account."""
    running = Bridge(
        BridgeConfig(
            url=broker.url,
            username=broker.bridge_username,
            password=broker.bridge_password,
            # Mosquitto: the shared subscription production uses; amqtt has none.
            shared_group="edgefleet-bridge" if broker.kind == "mosquitto" else None,
            desired_poll_s=0.1,
        )
    )
    running.start()
    assert running.wait_connected(10), "the bridge account was refused"
    yield running
    running.stop()


@pytest.fixture
def connect(broker: BrokerUnderTest, probes: list[Probe]) -> Callable[..., Probe]:
    """A probe client on the broker under test, closed after the test."""

    def make(username: str | None, password: str | None, **kwargs: Any) -> Probe:
        probe = Probe(broker.url, username, password, **kwargs)
        probes.append(probe)
        return probe

    return make

"""Live mode against the real control plane: enrollment over REST, Mosquitto, the real bridge, PostgreSQL.

Two hundred simulated devices in one process enroll with tokens the
simulator issues itself (an admin API token), report what they run, send
telemetry the bridge stores and acknowledges, and converge on a model version
assigned to all of them: each verifies its signed desired document with the
trust store enrollment gave it. The chaos-marked test does the same for two
thousand devices.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from rest_framework.throttling import ScopedRateThrottle

from agent.kernel import protocol
from bridge.process import Bridge
from core.models import ApiToken
from escalations.models import Escalation
from fleet import services as fleet
from fleet.models import Device
from registry.models import ModelVersion
from simulator import behaviour, live
from simulator import scenario as scenarios
from simulator.device import SimDevice, SiteLinks
from telemetry.models import TelemetryRecord
from tests.brokers import address
from tests.registry.conftest import make_classifier, make_png_images, metadata_for
from tests.registry.helpers import publish
from tests.simulator.helpers import Signer

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def fleet_scenario(sites: int, per_site: int) -> scenarios.Scenario:
    return scenarios.parse(
        {
            "seed": 3,
            "duration_s": 3600,
            "window_s": 5,
            "heartbeat_s": 5,
            "model": {"name": "parts", "version": "1.0.0", "escalation_upload_share": 0},
            "hardware": {"orin": {"fps": 4}, "rpi5": {"fps": 2, "latency_ms": {"median": 35}}},
            "sites": [
                {
                    "name": "sim",
                    "count": sites,
                    "devices": per_site,
                    "uplink_kbps": 50_000,
                    "hardware": {"orin": 1, "rpi5": 1},
                }
            ],
        }
    )


@pytest.fixture
def versions(token_client: Callable[..., Any]) -> tuple[ModelVersion, ModelVersion]:
    client = token_client("publish")
    for seed, version in ((7, "1.0.0"), (8, "2.0.0")):
        response = publish(client, make_classifier(seed=seed), metadata_for(version), images=make_png_images())
        assert response.status_code == 201, response.content
    v1, v2 = ModelVersion.objects.filter(model__name="parts").order_by("sequence")
    return v1, v2


@pytest.fixture
def mass_enrollment(monkeypatch: pytest.MonkeyPatch) -> None:
    """As an operator provisioning a fleet raises ENROLL_THROTTLE_RATE (the class reads it once, at import)."""
    monkeypatch.setattr(ScopedRateThrottle, "THROTTLE_RATES", {"enroll": "100000/minute"})


class Running:
    """A live fleet on its own thread and event loop, as ``edgefleet-sim run`` runs it."""

    def __init__(self, scenario: scenarios.Scenario, options: live.Options) -> None:
        self.fleet: live.LiveFleet | None = None
        self.report: live.Report | None = None
        self.error: BaseException | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._main, args=(scenario, options), daemon=True)
        self._thread.start()

    def _main(self, scenario: scenarios.Scenario, options: live.Options) -> None:
        try:
            self.report = asyncio.run(live.run(scenario, options, on_ready=self._on_ready))
        except BaseException as exc:
            self.error = exc
            self._ready.set()

    def _on_ready(self, fleet: live.LiveFleet) -> None:
        self.fleet = fleet
        self._ready.set()

    def wait_ready(self, timeout: float) -> live.LiveFleet:
        assert self._ready.wait(timeout), "the fleet did not start"
        if self.error is not None:
            raise self.error
        assert self.fleet is not None
        return self.fleet

    def stop(self) -> live.Report:
        if self.fleet is not None:
            self.fleet.stop()
        self._thread.join(60)
        if self.error is not None:
            raise self.error
        assert self.report is not None
        return self.report


def clear_retained(url: str, device_ids: list[str]) -> None:
    """Leave the shared broker as found: one client clears every device's retained status and desired."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="sim-cleanup")
    client.connect(*address(url))
    client.loop_start()
    try:
        infos = [
            client.publish(protocol.topic(device_id, suffix), b"", qos=1, retain=True)
            for device_id in device_ids
            for suffix in ("status", "desired")
        ]
        for info in infos:
            info.wait_for_publish(10)
    finally:
        client.disconnect()
        client.loop_stop()


def wait_for(
    condition: Callable[[], bool], timeout: float, what: str, describe: Callable[[], str] = lambda: ""
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what} {describe()}")


def fleet_of(run: Running) -> live.LiveFleet:
    assert run.fleet is not None
    return run.fleet


@pytest.fixture
def simulated(
    live_server: Any, bridge: Bridge, mqtt_url: str, admin_user: Any, versions: Any, mass_enrollment: None
) -> Iterator[Callable[[scenarios.Scenario], Running]]:
    runs: list[Running] = []
    _, key = ApiToken.issue(admin_user, name="simulator", scopes=["fleet"])

    def start(scenario: scenarios.Scenario) -> Running:
        options = live.Options(server=live_server.url, mqtt_url=mqtt_url, api_token=key, report_every_s=5)
        run = Running(scenario, options)
        runs.append(run)
        return run

    try:
        yield start
    finally:
        for run in runs:
            if run.fleet is not None:
                run.fleet.stop()
        clear_retained(mqtt_url, list(Device.objects.values_list("device_id", flat=True)))


def converge(run: Running, count: int, v2: ModelVersion, timeout: float) -> live.Report:
    run.wait_ready(timeout)
    wait_for(lambda: Device.objects.filter(online=True).count() == count, timeout, f"{count} devices online")
    wait_for(
        lambda: Device.objects.filter(reported__model_version="1.0.0", reported__phase="active").count() == count,
        timeout,
        "every device to report 1.0.0 active",
    )
    wait_for(
        lambda: TelemetryRecord.objects.filter(kind="window").values("device_id").distinct().count() == count,
        timeout,
        "a window from every device, stored",
    )
    outcome = fleet.assign_models([fleet.Assignment(d) for d in Device.objects.all()], v2, actor="test")
    assert all(isinstance(generation, int) for generation in outcome.values()), outcome
    wait_for(
        lambda: Device.objects.filter(reported__model_version="2.0.0", reported__phase="active").count() == count,
        timeout,
        "every device to converge on 2.0.0",
        describe=lambda: str(Counter((d.sim.model_version, d.sim.phase) for d in fleet_of(run).devices)),
    )
    return run.stop()


@pytest.mark.timeout(120)
def test_two_hundred_simulated_devices_enroll_report_and_converge_on_a_signed_assignment(
    simulated: Callable[[scenarios.Scenario], Running], versions: tuple[ModelVersion, ModelVersion]
) -> None:
    started = time.monotonic()
    run = simulated(fleet_scenario(4, 50))
    report = converge(run, 200, versions[1], timeout=60)
    assert Device.objects.count() == 200
    assert set(Device.objects.values_list("hardware_profile", flat=True)) == {"orin", "rpi5"}
    for device in Device.objects.all():
        assert device.reported["generation"] == device.desired_generation
    assert report.desired_accepted == 200 and report.desired_refused == 0
    assert report.connect_refused == 0 and report.connected_peak == 200
    assert time.monotonic() - started < 60


@pytest.mark.chaos
@pytest.mark.timeout(600)
def test_two_thousand_simulated_devices_converge_from_one_process(
    simulated: Callable[[scenarios.Scenario], Running], versions: tuple[ModelVersion, ModelVersion]
) -> None:
    report = converge(simulated(fleet_scenario(20, 100)), 2000, versions[1], timeout=300)
    assert report.desired_accepted == 2000 and report.desired_refused == 0
    assert report.connected_peak == 2000


def test_a_simulated_devices_escalation_upload_is_what_the_api_takes(
    enroll_device: Callable[..., Any], site: Any, live_server: Any
) -> None:
    site.escalation_privacy = "metadata"
    site.save(update_fields=["escalation_privacy"])
    enrollment = enroll_device(site, name="sim-1")
    scenario = fleet_scenario(1, 1)
    signer = Signer()
    device = SimDevice(
        scenario,
        behaviour.fleet(scenario)[0],
        device_id=enrollment.device.device_id,
        keyring=signer.keyring,
        origin=protocol.utcnow(),
        links=SiteLinks(scenario),
    )
    identity = live.Identity("sim-1", site.slug, enrollment.device.device_id, enrollment.secret, "", [])
    metadata = device._escalation(10.0, 1, 0)
    status = live.Api(live_server.url, api_token=None, timeout=10).upload(identity, metadata)
    assert status in (201, 202), status
    assert Escalation.objects.filter(device=enrollment.device).count() == 1

"""A real agent process against the real broker and a real bridge: presence, heartbeats, commands, stop."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TextIO

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from agent import config as agent_config
from agent import outbox, protocol
from fleet.bridge import Bridge, BridgeConfig
from fleet.models import Device, Site
from telemetry.models import DeviceEvent, TelemetryRecord

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

AGENT = Path(sys.executable).with_name("edgefleet-agent")


class AgentProcess:
    def __init__(self, config: Path, log: Path) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFLEET_AGENT_")}
        self.log_path = log
        self._log: TextIO = log.open("w")
        self.proc = subprocess.Popen(
            [str(AGENT), "run", "--config", str(config)], stdout=self._log, stderr=subprocess.STDOUT, env=env
        )

    def log(self) -> str:
        return self.log_path.read_text()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=30)
        self._log.close()


@pytest.fixture
def bridge(mqtt_url: str) -> Iterator[Bridge]:
    bridge = Bridge(BridgeConfig(url=mqtt_url, shared_group=f"test-{uuid.uuid4().hex[:8]}", desired_poll_s=0.2))
    bridge.start()
    assert bridge.wait_connected(10), "bridge did not connect"
    yield bridge
    bridge.stop()


@pytest.fixture
def device(enroll_device: Callable[..., Any], mqtt_url: str) -> Iterator[tuple[Device, str]]:
    site = Site.objects.create(slug="plant-a", name="Plant A")
    enrollment = enroll_device(site, name="cam-1")
    yield enrollment.device, enrollment.secret
    # Leave the shared broker as found: no retained status or desired for this device.
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"cleanup-{uuid.uuid4().hex[:8]}")
    client.connect("127.0.0.1", 1883)
    client.loop_start()
    for suffix in ("status", "desired"):
        client.publish(protocol.topic(enrollment.device.device_id, suffix), b"", qos=1, retain=True).wait_for_publish(5)
    client.disconnect()
    client.loop_stop()


@pytest.fixture
def config(device: tuple[Device, str], mqtt_url: str, tmp_path: Path) -> Path:
    path = tmp_path / "agent.toml"
    settings = agent_config.AgentConfig.model_validate(
        {
            "server": {"url": "http://127.0.0.1:8000"},
            "device": {"id": device[0].device_id, "secret": device[1], "name": "cam-1", "site": "plant-a"},
            "mqtt": {"url": mqtt_url, "keepalive": 10},
            "agent": {"data_dir": str(tmp_path / "data"), "heartbeat_interval_s": 1, "log_level": "debug"},
        }
    )
    agent_config.write(path, settings)
    return path


@pytest.fixture
def running(config: Path, tmp_path: Path) -> Iterator[AgentProcess]:
    process = AgentProcess(config, tmp_path / "agent.log")
    yield process
    process.close()


def wait_until(predicate: Callable[[], bool], bridge: Bridge, timeout: float = 30) -> bool:
    """Re-check ``predicate`` whenever the bridge handles a message (heartbeats arrive every second)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        bridge.wait_for(lambda _b: predicate(), timeout=0.1)
    return predicate()


def online(device: Device) -> bool:
    device.refresh_from_db()
    return device.online


def heartbeat_acknowledged(data_dir: Path) -> bool:
    stats = outbox.inspect(data_dir / "outbox.db")
    return stats is not None and stats.acked_seq >= 1 and stats.depth == 0


def test_a_killed_agent_turns_offline_through_its_last_will(
    bridge: Bridge, device: tuple[Device, str], running: AgentProcess, tmp_path: Path
) -> None:
    row = device[0]
    assert wait_until(lambda: online(row), bridge), running.log()
    assert wait_until(lambda: heartbeat_acknowledged(tmp_path / "data"), bridge), running.log()
    row.refresh_from_db()
    assert row.agent_version and row.last_heartbeat["outbox_depth"] >= 0
    assert TelemetryRecord.objects.filter(device=row, kind="heartbeat").exists()

    running.proc.send_signal(signal.SIGKILL)
    running.proc.wait(timeout=10)
    assert wait_until(lambda: not online(row), bridge), "the last will did not mark the device offline"


def test_a_running_agent_answers_ping_stores_desired_and_stops_cleanly_on_sigterm(
    bridge: Bridge, device: tuple[Device, str], running: AgentProcess, tmp_path: Path, mqtt_url: str
) -> None:
    row = device[0]
    assert wait_until(lambda: online(row) and heartbeat_acknowledged(tmp_path / "data"), bridge), running.log()

    # desired -> stored on disk and reported back with its generation.
    row.set_desired({"config": {"telemetry_interval_s": 15}})
    assert wait_until(lambda: Device.objects.get(pk=row.pk).reported.get("generation") == 1, bridge), running.log()
    stored = protocol.decode("desired", (tmp_path / "data" / "desired.json").read_bytes())
    assert isinstance(stored, protocol.Desired) and stored.config == {"telemetry_interval_s": 15}
    assert Device.objects.get(pk=row.pk).reported["phase"] == "idle"

    # ping -> pong event; garbage on the commands topic is dropped without harm.
    sender = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"cloud-{uuid.uuid4().hex[:8]}")
    sender.connect("127.0.0.1", 1883)
    sender.loop_start()
    try:
        commands = protocol.topic(row.device_id, "commands")
        sender.publish(commands, b"{not json", qos=1).wait_for_publish(5)
        ping = protocol.Command(id="c-1", name="ping")
        sender.publish(commands, protocol.encode(ping), qos=1).wait_for_publish(5)
    finally:
        sender.disconnect()
        sender.loop_stop()
    assert wait_until(lambda: DeviceEvent.objects.filter(device=row, kind="pong").exists(), bridge), running.log()
    assert DeviceEvent.objects.get(device=row, kind="pong").data["command_id"] == "c-1"
    assert "reason=not_json" in running.log()

    running.proc.send_signal(signal.SIGTERM)
    assert running.proc.wait(timeout=30) == 0
    assert wait_until(lambda: not online(row), bridge), running.log()
    assert "event=stopped" in running.log() and "offline_not_confirmed" not in running.log()

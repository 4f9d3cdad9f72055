"""A real agent process against the real broker and a real bridge: presence, heartbeats, commands, stop."""

from __future__ import annotations

import signal
import socket
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from agent import config as agent_config
from agent import outbox
from agent.kernel import protocol
from bridge.process import Bridge
from fleet import desired
from fleet.models import Device
from registry.trust import trust_store
from telemetry.models import DeviceEvent, TelemetryRecord
from tests.agent.conftest import AgentProcess, wait_until
from tests.brokers import address, free_port

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

WRITTEN_BEFORE_START = 3


@pytest.fixture
def config(device: tuple[Device, str], mqtt_url: str, tmp_path: Path, agent_config_factory: Any) -> Path:
    path = tmp_path / "agent.toml"
    settings = agent_config_factory(
        mqtt_url=mqtt_url,
        device_id=device[0].device_id,
        secret=device[1],
        # The trust store enrollment writes: the agent acts only on desired state signed by these keys.
        trust=trust_store(),
        device={"name": "cam-1", "site": "plant-a"},
        mqtt={"keepalive": 10},
        agent={"heartbeat_interval_s": 1},
        logging={"level": "debug"},
    )
    agent_config.write(path, settings)
    # Windows written before the start (a previous run that never reached the broker): the
    # agent's first heartbeat counts them, before anything can be acknowledged.
    now = datetime.now(timezone.utc)
    window = {"start": (now - timedelta(minutes=1)).isoformat(), "end": now.isoformat(), "frames": 0}
    with outbox.Outbox(settings.outbox_path) as box:
        for _ in range(WRITTEN_BEFORE_START):
            box.append("window", window)
    return path


@pytest.fixture
def running(config: Path, tmp_path: Path, notify_socket: socket.socket) -> Iterator[AgentProcess]:
    process = AgentProcess(
        config, tmp_path / "agent.log", NOTIFY_SOCKET=notify_socket.getsockname(), WATCHDOG_USEC="400000"
    )
    yield process
    process.close()


def notifications(sock: socket.socket) -> list[str]:
    sock.setblocking(False)
    received = []
    while True:
        try:
            received.append(sock.recv(4096).decode())
        except BlockingIOError:
            return received


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
    first = TelemetryRecord.objects.get(device=row, seq=WRITTEN_BEFORE_START + 1)
    assert first.kind == "heartbeat" and first.data["outbox_depth"] == WRITTEN_BEFORE_START
    # The device row holds a heartbeat the control plane stored (read after it, so already stored):
    # the same fields, plus its time and the optional ones the device left out.
    beats = [r.data for r in TelemetryRecord.objects.filter(device=row, kind="heartbeat")]
    held = {key: value for key, value in row.last_heartbeat.items() if key != "ts" and value is not None}
    assert held in beats and row.agent_version == held["agent_version"]

    running.proc.send_signal(signal.SIGKILL)
    running.proc.wait(timeout=10)
    assert wait_until(lambda: not online(row), bridge), "the last will did not mark the device offline"


def test_a_running_agent_answers_ping_stores_desired_and_stops_cleanly_on_sigterm(
    bridge: Bridge,
    device: tuple[Device, str],
    running: AgentProcess,
    tmp_path: Path,
    notify_socket: socket.socket,
    mqtt_url: str,
) -> None:
    row = device[0]
    assert wait_until(lambda: online(row) and heartbeat_acknowledged(tmp_path / "data"), bridge), running.log()

    # desired -> stored on disk and reported back with its generation.
    desired.issue(row, {"config": {"telemetry_interval_s": 15}})
    assert wait_until(lambda: Device.objects.get(pk=row.pk).reported.get("generation") == 1, bridge), running.log()
    stored = protocol.decode("desired", (tmp_path / "data" / "desired.json").read_bytes())
    assert isinstance(stored, protocol.Desired) and stored.config.telemetry_interval_s == 15
    assert Device.objects.get(pk=row.pk).reported["phase"] == "idle"

    # ping -> pong event; garbage on the commands topic is dropped without harm.
    sender = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"cloud-{uuid.uuid4().hex[:8]}")
    sender.connect(*address(mqtt_url))
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
    assert "msg=stopped" in running.log() and "offline_not_confirmed" not in running.log()
    # systemd heard that it started, that its loop is alive, and that it stopped.
    told = notifications(notify_socket)
    assert told[0] == "READY=1" and "WATCHDOG=1" in told and told[-1] == "STOPPING=1"


def test_sigterm_stops_an_agent_that_cannot_reach_its_broker(tmp_path: Path, agent_config_factory: Any) -> None:
    path = tmp_path / "agent.toml"
    agent_config.write(
        path,
        agent_config_factory(
            mqtt_url=f"mqtt://127.0.0.1:{free_port()}", device_id="dev-nowhere", agent={"heartbeat_interval_s": 1}
        ),
    )
    process = AgentProcess(path, tmp_path / "agent.log")
    try:
        # Offline, it still keeps its heartbeats.
        def heartbeats() -> int:
            stats = outbox.inspect(tmp_path / "data" / "outbox.db")
            return stats.depth if stats else 0

        deadline = time.monotonic() + 30
        while heartbeats() < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert heartbeats() >= 2, process.log()
        process.proc.send_signal(signal.SIGTERM)
        assert process.proc.wait(timeout=30) == 0
        assert "msg=stopped" in process.log()
    finally:
        process.close()

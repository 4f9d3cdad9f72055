"""A broker that goes away and comes back: every record the agent wrote meanwhile arrives, once."""

from __future__ import annotations

import os
import pwd
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent import config as agent_config
from agent import outbox
from bridge.process import Bridge, BridgeConfig
from fleet.models import Device
from telemetry.models import TelemetryRecord
from tests.agent.conftest import AgentProcess, wait_until
from tests.brokers import MOSQUITTO, free_port, wait_for_connack

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


class PrivateBroker:
    """An anonymous Mosquitto of our own, so stopping it disturbs nobody else."""

    def __init__(self, workdir: Path) -> None:
        if not (Path(MOSQUITTO).is_file() and os.access(MOSQUITTO, os.X_OK)):
            pytest.skip(f"mosquitto binary not found ({MOSQUITTO})")
        self.port = free_port()
        self.config = workdir / "mosquitto.conf"
        # Run as root, Mosquitto would drop to a user that cannot read this private directory.
        self.config.write_text(
            f"user {pwd.getpwuid(os.geteuid()).pw_name}\nlistener {self.port} 127.0.0.1\n"
            "allow_anonymous true\npersistence false\nmax_queued_messages 100000\n"
        )
        self.log = workdir / "mosquitto.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen([MOSQUITTO, "-c", str(self.config)], stdout=log, stderr=subprocess.STDOUT)
        wait_for_connack("127.0.0.1", self.port, alive=self.process)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[PrivateBroker]:
    broker = PrivateBroker(tmp_path)
    broker.start()
    yield broker
    broker.kill()


def poll(predicate: Callable[[], bool], timeout: float = 30) -> bool:
    # Nothing announces a heartbeat written while the broker is down; look at the outbox.
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


def start_bridge(url: str) -> Bridge:
    bridge = Bridge(BridgeConfig(url=url, shared_group=f"test-{uuid.uuid4().hex[:8]}", desired_poll_s=0.2))
    bridge.client.reconnect_delay_set(min_delay=1, max_delay=2)
    bridge.start()
    assert bridge.wait_connected(10), "bridge did not connect"
    return bridge


def test_records_written_while_the_broker_was_down_all_arrive_once(
    broker: PrivateBroker, device: tuple[Device, str], tmp_path: Path, agent_config_factory: Any
) -> None:
    data = tmp_path / "data"
    path = tmp_path / "agent.toml"
    agent_config.write(
        path,
        agent_config_factory(
            mqtt_url=broker.url,
            device_id=device[0].device_id,
            secret=device[1],
            mqtt={"reconnect_min_s": 1, "reconnect_max_s": 2},
            agent={"heartbeat_interval_s": 1},
            logging={"level": "debug"},
            # Far beyond the test: only the duplicate-ack resend can recover what the broker dropped.
            outbox={"resend_after_s": 3600},
        ),
    )
    bridge = start_bridge(broker.url)
    process = AgentProcess(path, tmp_path / "agent.log")

    def stats() -> outbox.OutboxStats:
        found = outbox.inspect(data / "outbox.db")
        return found if found is not None else outbox.OutboxStats(0, 0, 0, 0, 0, 0, None)

    try:
        assert wait_until(lambda: stats().acked_seq >= 1, bridge), process.log()
        bridge.stop()
        broker.kill()
        written_before = stats().last_seq
        # The agent keeps writing heartbeats into its outbox while the broker is away.
        assert poll(lambda: stats().last_seq >= written_before + 3 and stats().depth >= 3), process.log()
        written_offline = stats().last_seq

        # The agent is back before any bridge: what it resends at once reaches nobody and is lost.
        broker.start()
        assert poll(lambda: 'msg="telemetry sent"' in process.log().partition("msg=reconnected")[2]), process.log()
        bridge = start_bridge(broker.url)
        assert wait_until(lambda: stats().acked_seq >= written_offline and stats().depth <= 1, bridge), process.log()
        stored = list(TelemetryRecord.objects.filter(device=device[0]).order_by("seq").values_list("seq", flat=True))
        assert stored[:written_offline] == list(range(1, written_offline + 1))
        assert "reason=duplicate_acks" in process.log()
    finally:
        process.close()
        bridge.stop()

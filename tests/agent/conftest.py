"""Shared by the agent tests: a real agent process, a real bridge, an enrolled device."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TextIO

import pytest

from bridge.process import Bridge, BridgeConfig
from fleet.models import Device, Site
from tests.brokers import clear_retained

AGENT = Path(sys.executable).with_name("edgefleet-agent")


class AgentProcess:
    def __init__(self, config: Path, log: Path, **extra_env: str) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFLEET_AGENT_")}
        env.update(extra_env)
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
def bridge(mqtt_url: str, bridge_group: str | None) -> Iterator[Bridge]:
    bridge = Bridge(BridgeConfig(url=mqtt_url, shared_group=bridge_group, desired_poll_s=0.2))
    bridge.start()
    assert bridge.wait_connected(10), "bridge did not connect"
    yield bridge
    bridge.stop()


@pytest.fixture
def device(enroll_device: Callable[..., Any], mqtt_url: str) -> Iterator[tuple[Device, str]]:
    site = Site.objects.create(slug="plant-a", name="Plant A")
    enrollment = enroll_device(site, name="cam-1")
    yield enrollment.device, enrollment.secret
    clear_retained(mqtt_url, enrollment.device.device_id)


def wait_until(predicate: Callable[[], bool], bridge: Bridge, timeout: float = 30) -> bool:
    """Re-check ``predicate`` whenever the bridge handles a message (heartbeats arrive every second)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        bridge.wait_for(lambda _b: predicate(), timeout=0.1)
    return predicate()

"""The agent publishes ``reported`` again every ``agent.report_interval_s``, not only when it changes.

A report the broker took but the control plane never stored (a bridge killed
with SIGKILL between the two, a broker restarted before it saved) would
otherwise leave the device's state stale until its next change: a rollout
stage waiting for an ``active`` that was already sent stalls until its
activation timeout (tests/chaos/test_process_faults.py found it).
"""

from __future__ import annotations

import threading
import uuid
from datetime import datetime
from pathlib import Path

import pytest

from agent.kernel import protocol
from agent.runtime import Runtime
from tests.agent.helpers import make_agent_config
from tests.brokers import clear_retained
from tests.fleet.broker.clients import Probe

pytestmark = pytest.mark.integration


def test_the_same_report_comes_again_at_its_interval(mqtt_url: str, tmp_path: Path) -> None:
    device_id = f"dev-report-{uuid.uuid4().hex[:8]}"
    watcher = Probe(mqtt_url, None, None, client_id=f"watch-{device_id}")
    assert not watcher.connect().is_failure
    topic = protocol.topic(device_id, "reported")
    assert not watcher.subscribe(topic).is_failure
    config = make_agent_config(
        tmp_path / "data", mqtt_url=mqtt_url, device_id=device_id, agent={"report_interval_s": 1}
    )
    runtime = Runtime(config, components=[])
    agent = threading.Thread(target=runtime.run, name="agent-run")
    agent.start()
    try:
        # The report on connecting, then two more from the interval alone: nothing changed in between.
        assert watcher.wait(lambda: len(watcher.received(topic)) >= 3, timeout=30)
    finally:
        runtime.stop()
        agent.join(30)
        watcher.close()
        clear_retained(mqtt_url, device_id)
    reports = [protocol.decode("reported", payload) for payload in watcher.received(topic)]
    assert all(isinstance(r, protocol.Reported) for r in reports)
    assert {(r.generation, r.phase, r.model_version) for r in reports} == {(0, "idle", reports[0].model_version)}
    stamps: list[datetime] = [r.ts for r in reports]
    # Each a new report (the control plane keeps the newest by generation, then time).
    assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)

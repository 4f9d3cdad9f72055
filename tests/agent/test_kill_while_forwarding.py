"""kill -9 the agent at random points while it writes and forwards telemetry through a real broker.

The child is the agent's own ``Runtime`` (outbox, MQTT link, pump), forked from this process so
each round costs milliseconds, with a thread appending records as inference would. The control
plane is ``tests.fakes.MqttControlPlane``: it stores records de-duplicated on seq and acknowledges
the highest contiguous one, as the bridge does. After every kill: ``PRAGMA integrity_check`` is ok and every
committed record is either still in the outbox or already stored here; a seq is never reused for
other data. At the end one clean run drains everything: each record arrived, exactly once after
de-duplication.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import sqlite3
import threading
import time
import uuid
from pathlib import Path

import pytest

from agent import config as agent_config
from agent import outbox
from tests.agent.helpers import make_agent_config
from tests.fakes import MqttControlPlane, TelemetryStore

pytestmark = pytest.mark.integration


def _agent(config_path: Path, run_id: str) -> None:
    """The forked child: the agent's runtime plus a producer thread, until killed or SIGTERM."""
    from agent.runtime import Runtime

    runtime = Runtime(agent_config.load(config_path, environ={}))

    def produce() -> None:
        i = 0
        while not runtime.stopping.is_set():
            try:
                runtime.outbox.append("window", {"run": run_id, "i": i})
            except (ValueError, sqlite3.Error):
                return  # closed under us on the way out
            i += 1
            time.sleep(0.0005)

    threading.Thread(target=produce, daemon=True).start()
    os._exit(runtime.run())


def write_config(tmp_path: Path, url: str, device_id: str) -> Path:
    settings = make_agent_config(
        tmp_path / "data",
        mqtt_url=url,
        device_id=device_id,
        mqtt={"keepalive": 10},
        agent={"heartbeat_interval_s": 1},
        outbox={"resend_after_s": 1.0},
    )
    path = tmp_path / "agent.toml"
    agent_config.write(path, settings)
    return path


def check_outbox(path: Path, cloud: TelemetryStore) -> int:
    """Integrity, and every committed record either still here or stored by the cloud; returns the top seq."""
    db = sqlite3.connect(path)
    try:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "records" not in tables:
            return 0  # killed before the first schema commit: nothing was ever committed
        stats = outbox.inspect(path)
        assert stats is not None
        pending = {seq for (seq,) in db.execute("SELECT seq FROM records")}
    finally:
        db.close()
    with cloud.changed:
        stored = set(cloud.records)
    missing = set(range(1, stats.last_seq + 1)) - pending - stored
    assert not missing, f"committed records lost: {sorted(missing)[:10]}"
    assert stats.dropped_total == 0
    return stats.last_seq


def kill_loop(rounds: int, mqtt_url: str, tmp_path: Path, seed: int) -> None:
    device_id = f"chaos-{uuid.uuid4().hex[:10]}"
    config_path = write_config(tmp_path, mqtt_url, device_id)
    control_plane = MqttControlPlane(mqtt_url, device_id)
    cloud = control_plane.store
    fork = multiprocessing.get_context("fork")
    rng = random.Random(seed)
    box = tmp_path / "data" / "outbox.db"
    try:
        top = 0
        for round_ in range(rounds):
            child = fork.Process(target=_agent, args=(config_path, f"r{round_}"), daemon=True)
            child.start()
            time.sleep(rng.uniform(0.02, 0.3))  # a random point: starting, writing, publishing, acking
            os.kill(child.pid, signal.SIGKILL)  # type: ignore[arg-type]
            child.join(10)
            assert child.exitcode == -signal.SIGKILL
            if box.exists():
                top = max(top, check_outbox(box, cloud))
        assert top > 0, "the agent never committed a record"
        # One clean run drains what the kills left behind; then stop it with SIGTERM.
        child = fork.Process(target=_agent, args=(config_path, "final"), daemon=True)
        child.start()
        # Its first record stored means its signal handlers are in place.
        assert cloud.wait_until(lambda store: any(d.get("run") == "final" for d in store.records.values()), 60), (
            "the clean run sent nothing"
        )
        assert cloud.wait_for(top, timeout=60), f"stored up to {cloud.contiguous}, committed {top}"
        os.kill(child.pid, signal.SIGTERM)  # type: ignore[arg-type]
        child.join(30)
        assert child.exitcode == 0
        final_top = check_outbox(box, cloud)
        assert cloud.conflicts == [], f"a seq was reused for other data: {cloud.conflicts[:10]}"
        with cloud.changed:
            assert set(range(1, top + 1)) <= set(cloud.records)
            assert len(cloud.records) <= final_top
    finally:
        control_plane.close()


def test_fifty_kills_while_writing_and_forwarding_lose_and_duplicate_nothing(mqtt_url: str, tmp_path: Path) -> None:
    kill_loop(50, mqtt_url, tmp_path, seed=50)


@pytest.mark.chaos
@pytest.mark.timeout(1800)
def test_a_thousand_kills_while_writing_and_forwarding_lose_and_duplicate_nothing(
    mqtt_url: str, tmp_path: Path
) -> None:
    kill_loop(1000, mqtt_url, tmp_path, seed=int(time.time()))

"""After an outage the agent drains its backlog through the real broker and bridge, dropped records included."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent import config as agent_config
from agent import outbox
from agent.outbox import Outbox
from bridge.process import Bridge
from fleet.models import Device
from telemetry.models import TelemetryRecord
from tests.agent.conftest import AgentProcess, wait_until
from tests.payloads import heartbeat_data

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

MAX_BYTES = 512 * 1024


@pytest.fixture
def backlog(
    device: tuple[Device, str], mqtt_url: str, tmp_path: Path, agent_config_factory: Any
) -> Iterator[tuple[Path, set[int], set[int]]]:
    """An agent whose outbox filled up during an outage: kept and dropped seqs."""
    data = tmp_path / "data"
    with Outbox(data / "outbox.db", max_bytes=MAX_BYTES, commit_records=10_000) as box:
        written = set()
        for i in range(300):
            written.add(box.append("heartbeat", heartbeat_data(pad="h" * 2000)))
            written.add(box.append("window", {"i": i, "frames": 25}))
            written.add(box.append("window", {"i": i, "frames": 30}))
        box.commit()
    db = sqlite3.connect(data / "outbox.db")
    kept = {row[0] for row in db.execute("SELECT seq FROM records")}
    db.close()
    path = tmp_path / "agent.toml"
    agent_config.write(
        path,
        agent_config_factory(
            mqtt_url=mqtt_url,
            device_id=device[0].device_id,
            secret=device[1],
            agent={"heartbeat_interval_s": 1},
            logging={"level": "debug"},
            outbox={"max_bytes": MAX_BYTES},
        ),
    )
    yield path, kept, written - kept


def test_the_backlog_arrives_once_and_the_ack_steps_over_dropped_records(
    bridge: Bridge, device: tuple[Device, str], backlog: tuple[Path, set[int], set[int]], tmp_path: Path
) -> None:
    config, kept, dropped = backlog
    assert dropped and min(dropped) < max(kept), "the test needs gaps inside the backlog"
    row = device[0]
    process = AgentProcess(config, tmp_path / "agent.log")
    try:

        def drained() -> bool:
            stats = outbox.inspect(tmp_path / "data" / "outbox.db")
            return stats is not None and stats.depth == 0 and stats.acked_seq > max(kept)

        assert wait_until(drained, bridge, timeout=90), process.log()
        stored = set(TelemetryRecord.objects.filter(device=row).values_list("seq", flat=True))
        assert kept <= stored and not (dropped & stored)
        row.refresh_from_db()
        assert row.telemetry_acked_seq > max(kept)
        assert row.last_heartbeat["outbox_dropped_total"] == len(dropped)
    finally:
        process.close()

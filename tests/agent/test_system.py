"""Heartbeat facts are measured from the machine and fit the protocol."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from agent import __version__, system
from agent.kernel import protocol


def test_a_heartbeat_validates_as_the_protocol_heartbeat(tmp_path: Path) -> None:
    beat = system.heartbeat(tmp_path, outbox_depth=7, model_version="1.2.0", outbox_dropped_total=3)
    record = protocol.TelemetryRecord(seq=1, kind="heartbeat", ts=protocol.utcnow(), data=beat.model_dump(mode="json"))
    again = protocol.heartbeat_of(record)
    assert again.agent_version == __version__ and again.outbox_depth == 7 and again.model_version == "1.2.0"
    # The disk the data dir is on, as measured again now (other writers move it a little meanwhile).
    disk = shutil.disk_usage(tmp_path)
    assert abs(again.disk_percent - 100 * disk.used / (disk.used + disk.free)) < 1
    assert abs(again.disk_free_bytes - disk.free) < 256 * 1024 * 1024
    assert again.model_dump()["outbox_dropped_total"] == 3


def test_sensors_the_platform_lacks_read_as_none_rather_than_a_guess(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(system.psutil, "sensors_temperatures", raising=False)
    monkeypatch.setattr(system.psutil, "cpu_freq", lambda: None)
    assert system.temperature_c() is None and system.cpu_freq_mhz() is None

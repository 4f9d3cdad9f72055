"""edgefleet-sim check and trace: what a scenario holds, and what its devices publish offline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from simulator import cli

pytestmark = pytest.mark.unit

SHIPPED = Path(__file__).resolve().parents[2] / "simulator" / "scenarios" / "two-plants.toml"


def test_check_prints_the_fleet(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["check", str(SHIPPED)]) == cli.EXIT_OK
    out = capsys.readouterr().out
    assert "168 devices at 11 sites" in out and "jetson-orin 76, rpi5 92" in out


def test_check_refuses_a_bad_scenario_naming_the_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[[sites]]\nname = "a"\nuplink_kbps = 0\n')
    assert cli.main(["check", str(path)]) == cli.EXIT_USAGE
    assert "sites[0].uplink_kbps" in capsys.readouterr().err


def test_trace_prints_a_devices_messages_the_same_way_twice(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["trace", str(SHIPPED), "--seconds", "600", "--device", "farm-0001"]
    assert cli.main(argv) == cli.EXIT_OK
    first = capsys.readouterr().out
    assert cli.main(argv) == cli.EXIT_OK
    assert capsys.readouterr().out == first
    lines = [json.loads(line) for line in first.splitlines()]
    assert [m["topic"] for m in lines[:2]] == ["status", "reported"]
    assert cli.main([*argv, "--seed", "8"]) == cli.EXIT_OK
    assert capsys.readouterr().out != first


def test_a_control_plane_that_cannot_be_reached_is_one_line_and_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plan = tmp_path / "plan.json"
    plan.write_text('{"stages": [{"kind": "percent", "value": 100}]}')
    server = ["--server", "http://127.0.0.1:9"]
    assert cli.main(["what-if", str(SHIPPED), "--plan", str(plan), *server, "--token", "t"]) == cli.EXIT_FAILED
    assert cli.main(["run", str(SHIPPED), *server, "--api-token", "t"]) == cli.EXIT_FAILED
    assert capsys.readouterr().err.count("cannot reach http://127.0.0.1:9") == 2
    assert cli.main(["run", str(SHIPPED), *server]) == cli.EXIT_FAILED
    assert "168 devices to enroll and 0 enrollment tokens" in capsys.readouterr().err

"""The demo's simulated fleet: a scenario the simulator accepts, at sites apart from the real agents'."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from demo import launcher, simfleet
from simulator import behaviour
from simulator import scenario as scenarios


def fleet(devices: int) -> list[behaviour.DeviceSpec]:
    return behaviour.fleet(scenarios.parse(scenarios.tomllib.loads(simfleet.scenario(devices))))


def test_it_spreads_the_devices_over_sim_sites_of_their_own() -> None:
    specs = fleet(1001)

    per_site = Counter(spec.site for spec in specs)
    assert sorted(per_site.values()) == [250, 250, 250, 251]
    assert all(site.startswith("sim-") for site in per_site)
    assert not set(per_site) & set(launcher.SITES), "the real agents' sites stay theirs"
    assert {spec.hardware for spec in specs} == set(launcher.HARDWARE)


def test_a_small_fleet_uses_only_the_sites_it_fills() -> None:
    assert simfleet.spread(2) == {"sim-plant-west": 1, "sim-depot-north": 1}
    assert len(fleet(2)) == 2


def test_it_heartbeats_well_within_the_demos_offline_cutoff(tmp_path: Path) -> None:
    demo = launcher.Demo(data_dir=tmp_path, web_port=0, mqtt_port=0, sim_devices=5)
    scenario = scenarios.load(simfleet.SimFleet(tmp_path / "sim", 5).write_scenario())

    assert scenario.heartbeat_s * 2 <= int(demo.env["DEVICE_OFFLINE_AFTER_S"])
    assert scenario.model.name == "parts-classifier"
    # Enrolling a thousand from one address is not throttled at 60 a minute.
    assert demo.env["ENROLL_THROTTLE_RATE"] == "100000/minute"
    assert "ENROLL_THROTTLE_RATE" not in launcher.Demo(data_dir=tmp_path, web_port=0, mqtt_port=0).env


def test_it_refuses_no_devices() -> None:
    with pytest.raises(ValueError, match="at least one"):
        simfleet.scenario(0)


def test_the_demo_refuses_simulated_devices_with_the_rollout_rehearsal(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        launcher.main(["--sim-devices", "5", "--rollouts", "--data-dir", "/nonexistent/demo"])
    assert "real agents only" in capsys.readouterr().err

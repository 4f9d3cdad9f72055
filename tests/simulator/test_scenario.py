"""Scenario files: what they describe, and the clear refusal of what they get wrong."""

from __future__ import annotations

from pathlib import Path

import pytest

from simulator import behaviour
from simulator import scenario as scenarios
from tests.simulator.helpers import SMALL, small

pytestmark = pytest.mark.unit

SHIPPED = Path(__file__).resolve().parents[2] / "simulator" / "scenarios"


def test_it_lays_out_sites_and_the_hardware_mix_by_weight() -> None:
    specs = behaviour.fleet(small())
    assert [s.site for s in specs].count("plant-001") == 6
    assert {s.site for s in specs} == {"plant-001", "plant-002", "farm"}
    plant = [s.hardware for s in specs if s.site == "plant-001"]
    assert plant.count("orin") == 4 and plant.count("rpi5") == 2
    assert len({s.name for s in specs}) == len(specs)


def test_every_shipped_scenario_parses() -> None:
    files = sorted(SHIPPED.glob("*.toml"))
    assert files
    for path in files:
        assert scenarios.load(path).device_count > 0


@pytest.mark.parametrize(
    ("change", "where"),
    [
        ({"sites": [{"name": "a", "devices": 2, "uplink_kbs": 5}]}, "sites[0].uplink_kbs"),
        ({"sites": [{"name": "a", "devices": 0}]}, "sites[0].devices"),
        ({"sites": [{"name": "a", "hardware": "tpu"}]}, "sites[0].hardware.tpu"),
        ({"sites": [{"name": "a b"}]}, "sites[0].name"),
        ({"sites": [{"name": "a"}, {"name": "a"}]}, "sites[1].name"),
        ({"seed": "seven"}, "seed"),
        ({"duration_s": 0}, "duration_s"),
        ({"faults": [{"kind": "site_offline", "site": "nowhere", "at_s": 5}]}, "faults[0].site"),
        ({"faults": [{"kind": "bad_model", "hardware": "orin"}]}, "faults[0].version"),
        ({"faults": [{"kind": "meteor"}]}, "faults[0].kind"),
        ({"faults": [{"kind": "uplink", "site": "farm"}]}, "faults[0].uplink_kbps"),
        ({"hardware": {"orin": {"latency_ms": {"median": -1}}}}, "hardware.orin.latency_ms.median"),
        ({"start": "yesterday"}, "start"),
        ({"colour": "blue"}, "colour"),
    ],
)
def test_it_refuses_a_bad_scenario_naming_the_key(change: dict[str, object], where: str) -> None:
    with pytest.raises(scenarios.ScenarioError) as caught:
        scenarios.parse({**SMALL, **change})
    assert caught.value.where == where


def test_it_refuses_text_that_is_not_toml() -> None:
    with pytest.raises(scenarios.ScenarioError, match="not valid TOML"):
        scenarios.loads("seed = = 3")


def test_model_faults_read_from_key_value_pairs() -> None:
    assert scenarios.parse_pairs("hardware=rpi5,latency_factor=3.5,fails_validation=true,devices=2") == {
        "hardware": "rpi5",
        "latency_factor": 3.5,
        "fails_validation": True,
        "devices": 2,
    }
    with pytest.raises(scenarios.ScenarioError):
        scenarios.parse_pairs("latency_factor")

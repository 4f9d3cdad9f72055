"""What-if runs of a rollout plan on a simulated fleet: the verdict, what it touched, how long it took."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command

from rollouts import whatif
from simulator import scenario as scenarios
from tests.simulator.helpers import SMALL

pytestmark = pytest.mark.unit

PLAN = {"stages": [{"kind": "count", "value": 1}, {"kind": "percent", "value": 25}, {"kind": "percent", "value": 100}]}
# A soak long enough for the canary analysis to have its 50 device-minutes on the second stage.
GATES = {"soak_s": 900, "max_soak_extensions": 0}


def fleet(**overrides: Any) -> scenarios.Scenario:
    document = {
        **SMALL,
        "seed": 5,
        "sites": [
            {"name": "plant", "count": 3, "devices": 10, "uplink_kbps": 20_000, "hardware": {"orin": 1, "rpi5": 1}},
            {"name": "farm", "devices": 4, "uplink_kbps": 2_000, "hardware": "rpi5"},
        ],
    }
    return scenarios.parse({**document, **overrides})


def slow_on(hardware: str, factor: float = 3.0) -> list[dict[str, Any]]:
    return [{"kind": "bad_model", "version": "2.0.0", "hardware": hardware, "latency_factor": factor}]


def run(scenario: scenarios.Scenario, **options: Any) -> whatif.WhatIf:
    options.setdefault("gate_overrides", GATES)
    return whatif.run(scenario, options.pop("plan", PLAN), candidate="2.0.0", tick_s=15, **options)


def test_a_sound_candidate_completes_and_says_how_long_it_took() -> None:
    result = run(fleet())
    assert result.verdict == "completed", result.summary
    assert result.devices_on_candidate == result.devices_in_target == 34
    assert [s.verdict for s in result.stages] == ["pass", "pass", "pass"]
    # Three soaks of 15 minutes, and installs: well under the hour, over three quarters of it.
    assert 45 * 60 <= result.duration_s < 60 * 60


def test_a_model_slow_on_one_profile_is_caught_before_it_reaches_everyone() -> None:
    result = run(fleet(faults=slow_on("rpi5")))
    assert result.verdict == "caught", result.summary
    assert "latency_p95_ms_regression" in result.failed_gates
    assert result.halted_at_stage is not None and result.halted_at_stage < 2
    assert result.devices_touched < result.devices_in_target
    assert result.devices_on_candidate == 0  # on_failure revert: the stage goes back


def test_a_fault_the_gates_cannot_see_is_reported_as_not_caught() -> None:
    barely = [{"kind": "bad_model", "version": "2.0.0", "hardware": "rpi5", "latency_factor": 1.05}]
    result = run(fleet(faults=barely))
    assert result.verdict == "not_caught", result.summary
    assert result.faulty and result.devices_on_candidate == 34


def test_a_confidently_wrong_model_is_caught_by_its_class_mix() -> None:
    wrong = [{"kind": "bad_model", "version": "2.0.0", "wrong_share": 0.6}]
    result = run(fleet(), model_faults=whatif.faults_from(wrong, fleet(), "2.0.0"))
    assert result.verdict == "caught", result.summary
    assert "class_mix_shift" in result.failed_gates


def test_a_version_that_fails_validation_is_caught_by_failed_installs() -> None:
    broken = [{"kind": "bad_model", "version": "2.0.0", "hardware": "orin", "fails_validation": True}]
    result = run(
        fleet(faults=broken), plan={"stages": [{"kind": "percent", "value": 50}, {"kind": "percent", "value": 100}]}
    )
    assert (result.verdict, result.failed_gates, result.halted_at_stage) == ("caught", ["failed_installs"], 0)
    assert result.devices_failed == result.stages[0].failed > 0


def test_a_shadow_stage_stops_a_wrong_candidate_before_any_device_installs_it() -> None:
    wrong = [{"kind": "bad_model", "version": "2.0.0", "wrong_share": 0.3}]
    plan = {"stages": [{"kind": "count", "value": 4, "shadow": True}, {"kind": "percent", "value": 100}]}
    result = run(fleet(faults=wrong), plan=plan)
    assert (result.verdict, result.failed_gates) == ("caught", ["shadow_agreement"])
    assert result.devices_touched == 0


def test_a_slow_uplink_makes_the_rollout_longer() -> None:
    quick = run(fleet())
    gates = {**GATES, "max_concurrent_downloads_per_site": 1}
    slow_sites = [
        {"name": "plant", "count": 3, "devices": 10, "uplink_kbps": 20_000, "hardware": {"orin": 1, "rpi5": 1}},
        {"name": "farm", "devices": 4, "uplink_kbps": 64, "hardware": "rpi5"},
    ]
    slow = run(fleet(sites=slow_sites), gate_overrides=gates)
    assert slow.verdict == "completed", slow.summary
    # 2 MB at 64 kbit/s is 250 s a device, one at a time at the farm.
    assert slow.duration_s > quick.duration_s + 600


def test_a_site_going_offline_during_a_soak_halts_the_rollout() -> None:
    outage = [{"kind": "site_offline", "site": "plant-001", "at_s": 300, "for_s": 3600}]
    result = run(fleet(faults=outage), plan={"stages": [{"kind": "percent", "value": 100}]})
    assert result.verdict == "false_alarm"
    assert "silent_devices" in result.failed_gates


def test_the_same_inputs_give_the_same_answer() -> None:
    first = run(fleet(faults=slow_on("rpi5"))).as_json()
    assert run(fleet(faults=slow_on("rpi5"))).as_json() == first


def test_manage_py_what_if_prints_the_verdict_on_the_control_planes_host(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shipped = Path(__file__).resolve().parents[2] / "simulator" / "scenarios" / "two-plants.toml"
    plan = tmp_path / "plan.json"
    plan.write_text('{"stages": [{"kind": "count", "value": 1}, {"kind": "percent", "value": 100}]}')
    call_command("what_if", str(shipped), "--plan", str(plan), "--candidate", "2.0.0")
    out = capsys.readouterr().out
    assert out.startswith("verdict: caught: caught at stage 0 (count 1)")
    # 2 % slower on the Jetsons (none of which dies in this scenario): within every tolerance, not caught.
    jetsons = ["--target-hardware", "jetson-orin", "--candidate", "2.2.0", "--model-fault", "latency_factor=1.02"]
    with pytest.raises(SystemExit) as exited:
        call_command("what_if", str(shipped), "--plan", str(plan), *jetsons)
    assert exited.value.code == 3
    assert capsys.readouterr().out.startswith("verdict: not_caught")

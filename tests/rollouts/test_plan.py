"""Plans, targets and gate settings are checked strictly, each refusal naming its field."""

from __future__ import annotations

from typing import Any

import pytest

from core.errors import ServiceError
from rollouts import plan as plans

EVERYONE = {"kind": "percent", "value": 100}


@pytest.mark.parametrize(
    ("plan", "field"),
    [
        ([], "plan"),
        ({"stages": []}, "plan.stages"),
        ({"stages": [EVERYONE], "extra": 1}, "plan"),
        ({"stages": [{"kind": "count", "value": 1}]}, "plan.stages"),
        ({"stages": [{"kind": "percent", "value": 0}, EVERYONE]}, "plan.stages[0].value"),
        ({"stages": [{"kind": "percent", "value": 101}]}, "plan.stages[0].value"),
        (
            {"stages": [{"kind": "percent", "value": 50}, {"kind": "percent", "value": 50}, EVERYONE]},
            "plan.stages[1].value",
        ),
        ({"stages": [{"kind": "count", "value": 0}, EVERYONE]}, "plan.stages[0].value"),
        ({"stages": [{"kind": "count", "value": True}, EVERYONE]}, "plan.stages[0].value"),
        ({"stages": [{"kind": "count", "value": 1.5}, EVERYONE]}, "plan.stages[0].value"),
        ({"stages": [{"kind": "sites", "value": 0}, EVERYONE]}, "plan.stages[0].value"),
        ({"stages": [{"kind": "blue-green", "value": 1}, EVERYONE]}, "plan.stages[0].kind"),
        ({"stages": [{**EVERYONE, "requires_approval": "yes"}]}, "plan.stages[0].requires_approval"),
        ({"stages": [{"kind": "count", "value": 1}] * 20 + [EVERYONE]}, "plan.stages"),
    ],
)
def test_a_bad_plan_is_refused_naming_the_field(plan: Any, field: str) -> None:
    with pytest.raises(ServiceError) as caught:
        plans.parse_plan(plan)
    assert caught.value.code == "invalid_plan" and caught.value.status == 400
    assert list(caught.value.fields or {}) == [field]


def test_a_canary_ten_percent_site_wave_everyone_plan_is_accepted() -> None:
    stages = plans.parse_plan(
        {
            "stages": [
                {"kind": "count", "value": 1},
                {"kind": "percent", "value": 10},
                {"kind": "sites", "value": 2, "requires_approval": True},
                EVERYONE,
            ]
        }
    )
    assert [(s.kind, s.value, s.requires_approval) for s in stages] == [
        ("count", 1, False),
        ("percent", 10, False),
        ("sites", 2, True),
        ("percent", 100, False),
    ]


@pytest.mark.parametrize(
    ("target", "field"),
    [
        ({}, "target"),
        ({"everything": True}, "target"),
        ({"sites": []}, "target.sites"),
        ({"sites": ["x" * 65]}, "target.sites"),
        ({"labels": {"line": 3}}, "target.labels"),
        ({"running_model": ""}, "target.running_model"),
    ],
)
def test_a_bad_target_is_refused_naming_the_field(target: Any, field: str) -> None:
    with pytest.raises(ServiceError) as caught:
        plans.parse_target(target)
    assert caught.value.code == "invalid_target" and list(caught.value.fields or {}) == [field]


@pytest.mark.parametrize(
    ("gates", "field"),
    [
        ({"soak": 60}, "gates.soak"),
        ({"soak_s": -1}, "gates.soak_s"),
        ({"soak_s": 1.5}, "gates.soak_s"),
        ({"max_failed_installs_pct": 101}, "gates.max_failed_installs_pct"),
        ({"max_confidence_drop": True}, "gates.max_confidence_drop"),
        ({"on_failure": "ignore"}, "gates.on_failure"),
    ],
)
def test_bad_gate_settings_are_refused_naming_the_field(gates: Any, field: str) -> None:
    with pytest.raises(ServiceError) as caught:
        plans.parse_gates(gates)
    assert caught.value.code == "invalid_gates" and list(caught.value.fields or {}) == [field]


def test_overrides_lay_over_template_defaults_over_the_built_in_ones() -> None:
    gates = plans.effective_gates({"soak_s": 120, "max_p95_latency_regression": 0.1}, {"soak_s": 30})
    assert (gates["soak_s"], gates["max_p95_latency_regression"], gates["on_failure"]) == (30, 0.1, "revert")

"""POST /api/v1/rollouts/what-if/ and the command line that calls it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from rest_framework.test import APIClient

from core.models import ApiToken
from simulator import cli
from tests.simulator.helpers import SMALL

pytestmark = [pytest.mark.integration, pytest.mark.django_db]

URL = "/api/v1/rollouts/what-if/"
PLAN = {"stages": [{"kind": "count", "value": 2}, {"kind": "percent", "value": 100}]}
SHIPPED = Path(__file__).resolve().parents[2] / "simulator" / "scenarios" / "two-plants.toml"


def body(**overrides: Any) -> dict[str, Any]:
    return {
        "scenario": SMALL,
        "plan": PLAN,
        "candidate": "2.0.0",
        "gates": {"soak_s": 600, "max_soak_extensions": 0},
        "model_faults": [{"hardware": "rpi5", "latency_factor": 4}],
        **overrides,
    }


def test_it_answers_the_verdict_of_a_plan_on_a_simulated_fleet(token_client: Any) -> None:
    response = token_client("rollout").post(URL, body(), format="json")
    assert response.status_code == 200, response.content
    answer = response.json()
    assert answer["verdict"] == "caught" and answer["faulty"] is True
    assert "latency_p95_ms_regression" in answer["failed_gates"]
    assert answer["devices_in_target"] == 15 and 0 < answer["devices_touched"] < 15
    assert answer["stages"][answer["halted_at_stage"]]["verdict"] == "fail"
    assert answer["gates"]["soak_s"] == 600


def test_it_takes_the_scenario_as_toml_text(admin_client: APIClient) -> None:
    response = admin_client.post(URL, body(scenario=SHIPPED.read_text(), model_faults=[]), format="json")
    assert response.status_code == 200, response.content
    assert response.json()["verdict"] == "caught"  # two-plants.toml's own fault: 2.0.0 slow on rpi5


@pytest.mark.parametrize(
    ("change", "code", "field"),
    [
        (
            {"scenario": {**SMALL, "sites": [{"name": "a", "devices": -1}]}},
            "invalid_scenario",
            "scenario.sites[0].devices",
        ),
        ({"scenario": "seed = = 1"}, "invalid_scenario", "scenario"),
        ({"model_faults": [{"hardware": "tpu"}]}, "invalid_scenario", "model_faults[0].hardware"),
        ({"plan": {"stages": [{"kind": "count", "value": 1}]}}, "invalid_plan", "plan.stages"),
        ({"gates": {"soak_s": -1}}, "invalid_gates", "gates.soak_s"),
        ({"target": {"sites": ["elsewhere"]}}, "empty_target", "target"),
        ({"target": {"labels": {"a": "b"}}}, "invalid_target", "target.labels"),
        ({"start_s": "soon"}, "invalid", "start_s"),
    ],
)
def test_it_refuses_a_bad_request_in_the_one_error_shape(
    admin_client: APIClient, change: dict[str, Any], code: str, field: str
) -> None:
    response = admin_client.post(URL, body(**change), format="json")
    assert response.status_code == 400, response.content
    answer = response.json()
    assert answer["code"] == code and field in answer["fields"], answer


def test_it_refuses_a_fleet_too_large_for_a_request(admin_client: APIClient) -> None:
    huge = {**SMALL, "sites": [{"name": "big", "count": 30, "devices": 1000}]}
    response = admin_client.post(URL, body(scenario=huge, model_faults=[]), format="json")
    assert response.status_code == 400 and response.json()["code"] == "whatif_too_large"


def test_viewers_and_tokens_without_the_rollout_scope_may_not_ask(
    viewer_client: APIClient, token_client: Any, anonymous: APIClient
) -> None:
    assert viewer_client.post(URL, body(), format="json").status_code == 403
    assert token_client("publish").post(URL, body(), format="json").status_code == 403
    assert anonymous.post(URL, body(), format="json").status_code == 401


def test_the_schema_documents_it(admin_client: APIClient) -> None:
    schema = admin_client.get("/api/v1/schema/", {"format": "json"}).json()
    operation = schema["paths"][URL]["post"]
    assert {"200", "400"} <= set(operation["responses"])


@pytest.mark.django_db(transaction=True)
def test_the_command_line_prints_the_verdict_from_the_control_plane(
    live_server: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    user = get_user_model().objects.create_user("ci", is_staff=True)
    _, key = ApiToken.issue(user, name="ci", scopes=["rollout"])
    plan = tmp_path / "plan.json"
    plan.write_text(
        json.dumps(
            {
                "stages": [
                    {"kind": "count", "value": 1},
                    {"kind": "sites", "value": 3},
                    {"kind": "percent", "value": 100},
                ]
            }
        )
    )
    argv = ["what-if", str(SHIPPED), "--plan", str(plan), "--candidate", "2.0.0", "--server", live_server.url]
    code = cli.main([*argv, "--token", key])
    out = capsys.readouterr().out
    assert code == 0, out
    assert out.startswith("verdict: caught: caught at stage")
    code = cli.main([*argv, "--token", key, "--candidate", "2.1.0", "--json"])
    answer = json.loads(capsys.readouterr().out)
    # A sound version, halted all the same: the site wave takes plant-002, whose two dead devices never activate.
    assert (code, answer["verdict"], answer["failed_gates"]) == (3, "false_alarm", ["activation"])
    assert cli.main([*argv, "--token", key, "--model-fault", "hardware=jetson-orin,wrong_share=0.001"]) == 0

"""/api/v1/rollouts/ and /api/v1/rollout-templates/: rollout-scoped, audited, errors in the API's one shape."""

from __future__ import annotations

from typing import Any

import pytest

from core.models import AuditLog
from rollouts import scheduler
from rollouts.models import Rollout, RolloutTemplate

pytestmark = pytest.mark.django_db

PLAN = {"stages": [{"kind": "count", "value": 1}, {"kind": "percent", "value": 100, "requires_approval": True}]}
BODY = {"model": "parts", "version": "2.0.0", "target": {"running_model": "parts"}, "plan": PLAN, "reason": "2.0.0"}


def test_ci_starts_a_rollout_from_a_template_and_reads_its_stages_and_devices(versions, fleet_on_v1, token_client):
    ci = token_client("rollout")
    made = ci.post(
        "/api/v1/rollout-templates/",
        {"name": "canary-then-all", "plan": PLAN, "gate_defaults": {"soak_s": 300}},
        format="json",
    )
    assert made.status_code == 201, made.content

    started = ci.post(
        "/api/v1/rollouts/",
        {**{k: v for k, v in BODY.items() if k != "plan"}, "template": "canary-then-all"},
        format="json",
    )

    assert started.status_code == 201, started.content
    body = started.json()
    assert (body["state"], body["template"], body["gates"]["soak_s"], body["gates"]["on_failure"]) == (
        "pending",
        "canary-then-all",
        300,
        "revert",
    )
    assert [(s["index"], s["devices"], s["state"]) for s in body["stages"]] == [(0, 1, "pending"), (1, 9, "pending")]
    assert len(body["devices"]) == 10 and {d["from_version"] for d in body["devices"]} == {"1.0.0"}
    assert AuditLog.objects.filter(action="rollout.create", actor_label="alice").count() == 1
    assert AuditLog.objects.filter(action="rollout_template.create").count() == 1
    listed = ci.get("/api/v1/rollouts/").json()
    assert listed["count"] == 1 and listed["results"][0]["version"] == "2.0.0"


def test_pause_resume_approve_and_abort_are_actions_each_audited(versions, fleet_on_v1, token_client):
    ci = token_client("rollout")
    rollout_id = ci.post("/api/v1/rollouts/", BODY, format="json").json()["id"]
    url = f"/api/v1/rollouts/{rollout_id}"

    assert ci.post(f"{url}/pause/", {"reason": "lunch"}, format="json").json()["state"] == "paused"
    again = ci.post(f"{url}/pause/", {}, format="json")
    assert again.status_code == 409 and again.json()["code"] == "invalid_state"
    assert ci.post(f"{url}/resume/", {}, format="json").json()["state"] == "running"
    early = ci.post(f"{url}/approve/", {}, format="json")
    assert early.status_code == 409 and early.json()["code"] == "nothing_to_approve"
    Rollout.objects.filter(pk=rollout_id).update(current_stage=1)
    assert ci.post(f"{url}/approve/", {"reason": "canary fine"}, format="json").status_code == 200, "ahead of the tick"
    twice = ci.post(f"{url}/approve/", {}, format="json")
    assert twice.status_code == 409 and twice.json()["code"] == "nothing_to_approve"
    scheduler.tick()
    assert Rollout.objects.get(pk=rollout_id).stages.get(index=1).state == "installing"
    assert ci.post(f"{url}/abort/", {"reason": "wrong build"}, format="json").json()["state"] == "aborted"
    assert ci.post(f"{url}/abort/", {}, format="json").json()["state"] == "aborted", "idempotent"
    actions = list(
        AuditLog.objects.filter(target_type="rollouts.rollout").order_by("pk").values_list("action", "reason")
    )
    assert actions == [
        ("rollout.create", "2.0.0"),
        ("rollout.pause", "lunch"),
        ("rollout.resume", ""),
        ("rollout.approve", "canary fine"),
        ("rollout.stage_start", ""),
        ("rollout.abort", "wrong build"),
    ]


@pytest.mark.parametrize(
    ("change", "status", "code", "field"),
    [
        ({"plan": {"stages": [{"kind": "percent", "value": 150}]}}, 400, "invalid_plan", "plan.stages[0].value"),
        ({"plan": {"stages": [{"kind": "count", "value": 1}]}}, 400, "invalid_plan", "plan.stages"),
        ({"target": {"sites": ["nowhere"]}}, 400, "empty_target", "target"),
        ({"target": {"labels": {"line": "\x00"}}}, 400, "invalid_target", "target.labels"),
        ({"gates": {"soak_s": -5}}, 400, "invalid_gates", "gates.soak_s"),
        ({"version": "9.9.9"}, 400, "unknown_version", "version"),
        ({"template": "missing"}, 400, "unknown_template", "template"),
        ({"reason": 12}, 400, "invalid", "reason"),
    ],
)
def test_a_bad_request_is_refused_in_the_one_error_shape(
    versions, fleet_on_v1, token_client, change, status, code, field
):
    response = token_client("rollout").post("/api/v1/rollouts/", {**BODY, **change}, format="json")

    assert response.status_code == status, response.content
    assert response.json()["code"] == code and list(response.json()["fields"]) == [field]
    assert Rollout.objects.count() == 0


def test_a_device_already_in_an_active_rollout_is_a_conflict(versions, fleet_on_v1, token_client):
    ci = token_client("rollout")
    assert ci.post("/api/v1/rollouts/", BODY, format="json").status_code == 201
    second = ci.post("/api/v1/rollouts/", BODY, format="json")
    assert second.status_code == 409 and second.json()["code"] == "devices_in_rollout"


def test_a_template_with_a_bad_plan_or_a_taken_name_is_refused(token_client, admin_user):
    ci = token_client("rollout")
    RolloutTemplate.objects.create(name="taken", plan=PLAN)
    bad = ci.post("/api/v1/rollout-templates/", {"name": "x", "plan": {"stages": []}}, format="json")
    assert bad.status_code == 400 and list(bad.json()["fields"]) == ["plan"]
    taken = ci.post("/api/v1/rollout-templates/", {"name": "taken", "plan": PLAN}, format="json")
    assert taken.status_code == 400 and list(taken.json()["fields"]) == ["name"]
    gates = ci.patch("/api/v1/rollout-templates/taken/", {"gate_defaults": {"nope": 1}}, format="json")
    assert gates.status_code == 400 and list(gates.json()["fields"]) == ["gate_defaults"]


@pytest.mark.parametrize("scopes", [("publish",), ("fleet", "read")])
def test_writes_need_the_rollout_scope(versions, fleet_on_v1, token_client, scopes: Any):
    client = token_client(*scopes)
    assert client.post("/api/v1/rollouts/", BODY, format="json").status_code == 403
    assert client.post("/api/v1/rollout-templates/", {"name": "t", "plan": PLAN}, format="json").status_code == 403
    assert client.get("/api/v1/rollouts/").status_code == 200


def test_a_viewer_reads_but_cannot_start_a_rollout(versions, fleet_on_v1, viewer_client, anonymous):
    assert viewer_client.get("/api/v1/rollouts/").status_code == 200
    assert viewer_client.post("/api/v1/rollouts/", BODY, format="json").status_code == 403
    assert anonymous.get("/api/v1/rollouts/").status_code in (401, 403)

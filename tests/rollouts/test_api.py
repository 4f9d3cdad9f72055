"""/api/v1/rollouts/ and /api/v1/rollout-templates/: rollout-scoped, audited, errors in the API's one shape."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from core.models import AuditLog
from fleet import services as fleet
from rollouts import scheduler
from rollouts.models import Rollout, RolloutTemplate
from tests.rollouts.conftest import report

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
    assert body["device_states"] == {
        "pending": 10,
        "assigned": 0,
        "active": 0,
        "failed": 0,
        "reverted": 0,
        "silent": 0,
    }
    devices = ci.get(f"/api/v1/rollouts/{body['id']}/devices/").json()
    assert devices["count"] == 10 and {d["from_version"] for d in devices["results"]} == {"1.0.0"}
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


def test_a_rollouts_devices_come_a_page_at_a_time_filtered_by_state_stage_and_site(versions, fleet_on_v1, token_client):
    ci = token_client("rollout")
    rollout_id = ci.post("/api/v1/rollouts/", BODY, format="json").json()["id"]
    url = f"/api/v1/rollouts/{rollout_id}/devices/"
    Rollout.objects.get(pk=rollout_id).devices.filter(stage_index=0).update(state="failed", error="bad output")

    first = ci.get(url, {"limit": 4}).json()
    second = ci.get(url, {"limit": 4, "offset": 4}).json()
    assert first["count"] == 10 and len(first["results"]) == 4 and len(second["results"]) == 4
    ids = [d["device_id"] for d in first["results"] + second["results"]]
    assert len(set(ids)) == 8, "pages do not overlap"
    assert [d["stage_index"] for d in first["results"]] == [0, 1, 1, 1], "in stage order"

    failed = ci.get(url, {"state": "failed"}).json()
    assert [(d["stage_index"], d["error"]) for d in failed["results"]] == [(0, "bad output")]
    assert ci.get(url, {"stage": 1}).json()["count"] == 9
    assert ci.get(url, {"state": ["failed", "pending"]}).json()["count"] == 10
    assert ci.get(url, {"site": "plant-b"}).json()["count"] == 4
    detail = ci.get(f"/api/v1/rollouts/{rollout_id}/").json()
    assert (detail["device_states"]["failed"], detail["device_states"]["pending"]) == (1, 9)


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ({"stage": 2**64}, "stage"),
        ({"stage": -1}, "stage"),
        ({"stage": "1.5"}, "stage"),
        ({"state": "exploded"}, "state"),
        ({"ordering": "device__secret"}, "ordering"),
    ],
)
def test_a_filter_the_server_cannot_read_is_refused_in_the_one_error_shape(
    versions, fleet_on_v1, token_client, query, field
):
    ci = token_client("rollout")
    rollout_id = ci.post("/api/v1/rollouts/", BODY, format="json").json()["id"]
    answer = ci.get(f"/api/v1/rollouts/{rollout_id}/devices/", query)
    assert answer.status_code == 400, answer.content
    assert answer.json()["code"] == "invalid" and field in answer.json()["fields"]


def test_the_devices_of_a_rollout_that_does_not_exist_are_a_404_in_the_one_error_shape(token_client):
    answer = token_client("rollout").get("/api/v1/rollouts/999999/devices/")
    assert answer.status_code == 404 and answer.json()["code"] == "not_found"


def test_the_rollout_detail_costs_the_same_for_ten_devices_or_forty(
    versions, fleet_on_v1, site, enroll_device, token_client
):
    ci = token_client("rollout")
    first = ci.post("/api/v1/rollouts/", BODY, format="json").json()["id"]
    ci.post(f"/api/v1/rollouts/{first}/abort/", {"reason": "make room"}, format="json")
    with CaptureQueriesContext(connection) as ten:
        small = ci.get(f"/api/v1/rollouts/{first}/")
    v1, _ = versions
    for i in range(30):
        device = enroll_device(site, name=f"more-{i}", agent_version="0.1.0").device
        fleet.assign_model(device, v1, actor="test")
        report(device, v1)
    second = ci.post("/api/v1/rollouts/", BODY, format="json").json()["id"]
    assert Rollout.objects.get(pk=second).devices.count() == 40
    with CaptureQueriesContext(connection) as forty:
        large = ci.get(f"/api/v1/rollouts/{second}/")
    # Polled every few seconds by CI and the CLI: neither its queries nor its size grow with the rollout
    # (the devices themselves come a page at a time from .../devices/).
    assert small.status_code == large.status_code == 200
    assert len(forty) == len(ten)
    assert abs(len(large.content) - len(small.content)) < 100

"""The tick drives a rollout through its stages, halts and reverts a bad version, and is safe to run twice at once."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta
from typing import Any
from unittest import mock

import pytest
from django.db import connection
from django.utils import timezone

from core.errors import ServiceError
from core.models import AuditLog
from fleet import services as fleet
from fleet.models import Device, Site
from rollouts import scheduler, services
from rollouts.models import GateResult, Rollout, RolloutDevice, RolloutStage
from tests.rollouts.conftest import alive, report, sent_to, window
from tests.rollouts.helpers import drive, start_rollout


def running_v2(devices: list[Device]) -> list[str]:
    return [
        d.device_id
        for d in Device.objects.filter(pk__in=[d.pk for d in devices])
        if d.desired["model"]["version"] == "2.0.0"
    ]


@pytest.mark.django_db
def test_a_good_version_passes_canary_then_ten_percent_then_everyone(versions, fleet_on_v1):
    v1, v2 = versions
    rollout = start_rollout(v2)

    drive(rollout, v1, v2)

    rollout.refresh_from_db()
    assert rollout.state == Rollout.COMPLETED, rollout.halt_reason
    sizes = [RolloutDevice.objects.filter(rollout=rollout, stage_index=i).count() for i in range(3)]
    assert sizes == [1, 1, 8]
    assert {e.state for e in sent_to(rollout.pk)} == {RolloutDevice.ACTIVE}
    assert sorted(running_v2(fleet_on_v1)) == sorted(d.device_id for d in fleet_on_v1)
    assert list(rollout.stages.values_list("state", "verdict")) == [(RolloutStage.PASSED, "pass")] * 3
    latency = GateResult.objects.filter(stage__rollout=rollout, gate="latency_p95_ms_regression")
    # Judged twice a stage: a canary of a few minutes is too little for the canary analysis, which
    # extends the soak once and then abstains, leaving the verdict to the threshold gates.
    assert latency.count() == 6 and all(g.verdict == "pass" and g.threshold == 0.2 for g in latency)
    analysis = GateResult.objects.filter(stage__rollout=rollout, gate="canary_analysis")
    assert [g.details["analysis"] for g in analysis] == ["insufficient"] * 6
    assert {g.verdict for g in analysis} == {"pending"}
    actions = set(AuditLog.objects.filter(target_type="rollouts.rollout").values_list("action", flat=True))
    assert {"rollout.create", "rollout.start", "rollout.stage_passed", "rollout.complete"} <= actions


@pytest.mark.django_db
def test_a_version_failing_validation_is_halted_at_the_canary_and_the_canary_reverted(versions, fleet_on_v1):
    v1, v2 = versions
    rollout = start_rollout(v2)

    drive(rollout, v1, v2, phase="failed")

    rollout.refresh_from_db()
    assert rollout.state == Rollout.REVERTED and "failed_installs" in rollout.halt_reason
    (canary,) = sent_to(rollout.pk, RolloutDevice.REVERTED)
    canary.device.refresh_from_db()
    assert canary.device.desired["rollback_to"] == "1.0.0"
    assert canary.device.desired["model"]["version"] == "1.0.0"
    assert running_v2(fleet_on_v1) == [], "no device outside the canary ever received 2.0.0"
    assert AuditLog.objects.filter(action="device.assign_model", data__version="2.0.0").count() == 1
    gate = GateResult.objects.get(stage__rollout=rollout, gate="failed_installs")
    assert (gate.value, gate.threshold, gate.verdict) == (100.0, 0.0, "fail")


@pytest.mark.django_db
def test_a_too_slow_version_is_halted_at_the_canary_on_its_p95_latency(versions, fleet_on_v1):
    v1, v2 = versions
    rollout = start_rollout(v2)

    drive(rollout, v1, v2, latency_ms=30.0)

    rollout.refresh_from_db()
    assert rollout.state == Rollout.REVERTED
    gate = GateResult.objects.get(stage__rollout=rollout, gate="latency_p95_ms_regression")
    assert gate.verdict == "fail" and gate.value == pytest.approx(0.5, abs=0.1)
    assert len(sent_to(rollout.pk, RolloutDevice.REVERTED)) == 1
    assert running_v2(fleet_on_v1) == []


@pytest.mark.django_db
def test_the_pause_policy_halts_without_sending_anything_back(versions, fleet_on_v1):
    v1, v2 = versions
    rollout = start_rollout(v2, gates={"on_failure": "pause"})

    drive(rollout, v1, v2, latency_ms=30.0)

    rollout.refresh_from_db()
    assert rollout.state == Rollout.HALTED
    assert len(running_v2(fleet_on_v1)) == 1


@pytest.mark.django_db
def test_a_halted_rollout_resumed_is_judged_again_on_a_fresh_soak_against_the_time_before_its_stage(
    versions, fleet_on_v1
):
    v1, v2 = versions
    rollout = start_rollout(v2, gates={"on_failure": "pause"})
    end = drive(rollout, v1, v2, latency_ms=30.0)
    rollout.refresh_from_db()
    assert rollout.state == Rollout.HALTED

    # An hour later the operator has fixed what slowed the canary and asks for a second judgement.
    resumed_at = end + timedelta(hours=1)
    with mock.patch("rollouts.services.timezone.now", return_value=resumed_at):
        services.resume(rollout, actor="operator", reason="enclosure fan replaced; judge the canary again")
    rollout.refresh_from_db()
    stage = rollout.stages.get(index=0)
    assert (rollout.state, rollout.halt_reason) == (Rollout.RUNNING, "")
    assert (stage.state, stage.soak_until, stage.verdict) == (
        RolloutStage.SOAKING,
        resumed_at + timedelta(minutes=1),
        "",
    )
    canary = sent_to(rollout.pk, RolloutDevice.ACTIVE)[0].device
    for minute in range(4):
        window(canary, resumed_at + timedelta(minutes=minute), v2, seed=40 + minute)
    alive([canary], resumed_at + timedelta(minutes=4))
    for minute in (2, 4):
        scheduler.tick(now=resumed_at + timedelta(minutes=minute))

    rollout.refresh_from_db()
    assert rollout.stages.get(index=0).state == RolloutStage.PASSED and rollout.current_stage == 1
    latest = GateResult.objects.filter(stage__rollout=rollout, gate="latency_p95_ms_regression").order_by("pk")
    # Both judgements are kept: the slow one that halted it, then the fast one, against the same baseline.
    assert latest.first().verdict == "fail" and latest.last().verdict == "pass"
    assert latest.first().details["baseline"] == pytest.approx(latest.last().details["baseline"])
    assert AuditLog.objects.get(action="rollout.resume").data == {"from": "halted", "stage": 0}


@pytest.mark.django_db
def test_only_a_paused_or_a_gate_halted_rollout_resumes(versions, fleet_on_v1):
    v1, v2 = versions
    reverted = start_rollout(v2)
    drive(reverted, v1, v2, latency_ms=30.0)
    with pytest.raises(ServiceError, match="Only a paused or halted"):
        services.resume(reverted, actor="operator")
    failed_installs = start_rollout(v2, gates={"on_failure": "pause"})
    drive(failed_installs, v1, v2, phase="failed")
    failed_installs.refresh_from_db()
    assert failed_installs.state == Rollout.HALTED
    with pytest.raises(ServiceError, match="failed before its soak"):
        services.resume(failed_installs, actor="operator")


@pytest.mark.django_db
def test_a_stage_that_requires_approval_waits_for_it(versions, fleet_on_v1):
    v1, v2 = versions
    plan = {"stages": [{"kind": "count", "value": 1}, {"kind": "percent", "value": 100, "requires_approval": True}]}
    rollout = start_rollout(v2, plan=plan)

    drive(rollout, v1, v2, ticks=8)

    rollout.refresh_from_db()
    assert rollout.state == Rollout.RUNNING and rollout.current_stage == 1
    assert rollout.stages.get(index=1).state == RolloutStage.WAITING_APPROVAL
    assert len(running_v2(fleet_on_v1)) == 1
    services.approve(rollout, actor="operator", reason="canary looks fine")
    drive(rollout, v1, v2)
    rollout.refresh_from_db()
    assert rollout.state == Rollout.COMPLETED
    assert len(running_v2(fleet_on_v1)) == 10


@pytest.mark.django_db
def test_a_paused_rollout_is_left_alone_until_resumed_and_an_aborted_one_for_good(versions, fleet_on_v1):
    v1, v2 = versions
    rollout = start_rollout(v2)
    services.pause(rollout, actor="operator")

    drive(rollout, v1, v2, ticks=3)
    assert running_v2(fleet_on_v1) == []

    services.resume(rollout, actor="operator")
    scheduler.tick()
    assert len(running_v2(fleet_on_v1)) == 1
    services.abort(rollout, actor="operator", reason="wrong release")
    drive(rollout, v1, v2, ticks=5)
    rollout.refresh_from_db()
    assert rollout.state == Rollout.ABORTED and len(running_v2(fleet_on_v1)) == 1
    assert rollout.stages.get(index=0).state == RolloutStage.ABORTED
    with pytest.raises(Exception, match="cannot become"):
        services.pause(rollout, actor="operator")


@pytest.mark.django_db
def test_a_tick_that_dies_while_sending_a_stage_leaves_nothing_of_it(versions, fleet_on_v1):
    _, v2 = versions
    plan = {"stages": [{"kind": "count", "value": 3}, {"kind": "percent", "value": 100}]}
    rollout = start_rollout(v2, plan=plan)
    real = fleet.assign_models
    calls = []

    def dies_once_the_documents_are_written(*args: Any, **kwargs: Any) -> Any:
        calls.append(real(*args, **kwargs))
        raise SystemExit("worker killed")

    with mock.patch(
        "rollouts.scheduler.fleet.assign_models", autospec=True, side_effect=dies_once_the_documents_are_written
    ):
        with pytest.raises(SystemExit):
            scheduler.tick()

    rollout.refresh_from_db()
    assert calls and rollout.state == Rollout.PENDING
    assert rollout.stages.get(index=0).state == RolloutStage.PENDING
    assert running_v2(fleet_on_v1) == [] and {e.state for e in sent_to(rollout.pk)} == {RolloutDevice.PENDING}
    scheduler.tick()
    assert len(running_v2(fleet_on_v1)) == 3


@pytest.mark.django_db
def test_a_stage_larger_than_one_send_goes_out_over_several_ticks_and_passes_as_one(versions, fleet_on_v1, settings):
    v1, v2 = versions
    settings.ROLLOUT_SEND_CHUNK = 4
    rollout = start_rollout(v2, plan={"stages": [{"kind": "percent", "value": 100}]})
    now = timezone.now()

    sent = []
    for seconds in range(0, 60, 15):
        scheduler.tick(now=now + timedelta(seconds=seconds))
        sent.append(len(sent_to(rollout.pk, RolloutDevice.ASSIGNED)))
    # Four, then eight, then all ten: each tick's transaction signs at most a chunk of documents.
    assert sent == [4, 8, 10, 10]
    stage_audit = AuditLog.objects.filter(target_id=str(rollout.pk), action__startswith="rollout.stage_s")
    assert [(a.action, a.data["devices"], a.data["held"]) for a in stage_audit.order_by("pk")] == [
        ("rollout.stage_start", 4, 6),
        ("rollout.stage_send", 4, 2),
        ("rollout.stage_send", 2, 0),
    ]
    drive(rollout, v1, v2)
    rollout.refresh_from_db()
    assert rollout.state == Rollout.COMPLETED and len(running_v2(fleet_on_v1)) == 10


@pytest.mark.django_db(transaction=True)
def test_two_ticks_at_once_give_the_result_of_one(versions, fleet_on_v1):
    v1, v2 = versions
    rollout = start_rollout(v2)
    errors: list[BaseException] = []

    def tick_twice(at: datetime) -> None:
        barrier = threading.Barrier(2)

        def worker() -> None:
            try:
                barrier.wait(timeout=10)
                scheduler.tick(now=at)
            except BaseException as exc:  # reported by the test, not swallowed
                errors.append(exc)
            finally:
                connection.close()

        threads = [threading.Thread(target=worker) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)

    drive(rollout, v1, v2, ticker=tick_twice)

    assert errors == []
    rollout.refresh_from_db()
    assert rollout.state == Rollout.COMPLETED
    assert AuditLog.objects.filter(action="device.assign_model", data__version="2.0.0").count() == 10
    assert AuditLog.objects.filter(action="rollout.stage_passed").count() == 3
    assert GateResult.objects.filter(stage__rollout=rollout, gate="activation").count() == 3


@pytest.mark.django_db
def test_a_version_within_its_regression_limit_but_over_the_site_latency_budget_is_halted(versions, fleet_on_v1):
    v1, v2 = versions
    # p95 about 24.7 ms against a 20 ms budget: 80 % of it (16 ms) is what a new version may use.
    Site.objects.update(latency_budget_ms=20)
    rollout = start_rollout(v2)

    drive(rollout, v1, v2, latency_ms=21.0)

    rollout.refresh_from_db()
    assert rollout.state == Rollout.REVERTED
    results = {g.gate: g for g in GateResult.objects.filter(stage__rollout=rollout)}
    assert results["latency_p95_ms_regression"].verdict == "pass"
    budget = results["site_latency_budget"]
    assert (budget.verdict, budget.threshold) == ("fail", 16.0) and budget.value == pytest.approx(24.7, abs=1.5)


@pytest.mark.django_db
def test_a_site_budget_with_room_passes_and_is_recorded(versions, fleet_on_v1):
    v1, v2 = versions
    Site.objects.update(latency_budget_ms=100)
    rollout = start_rollout(v2)

    drive(rollout, v1, v2)

    rollout.refresh_from_db()
    assert rollout.state == Rollout.COMPLETED
    budgets = GateResult.objects.filter(stage__rollout=rollout, gate="site_latency_budget")
    assert budgets.count() == 6 and {g.verdict for g in budgets} == {"pass"}  # two judgements a stage


@pytest.mark.django_db
def test_a_fifteen_percent_slower_canary_is_caught_by_the_canary_analysis_against_its_control(versions, fleet_on_v1):
    v1, v2 = versions
    plan = {"stages": [{"kind": "count", "value": 5}, {"kind": "percent", "value": 100}]}
    rollout = start_rollout(v2, plan=plan, gates={"soak_s": 12 * 60})
    now = timezone.now().replace(second=0, microsecond=0)
    alive(Device.objects.all(), now)
    scheduler.tick(now=now)
    canary = [e.device for e in sent_to(rollout.pk, RolloutDevice.ASSIGNED)]
    control = [e.device for e in sent_to(rollout.pk, RolloutDevice.PENDING)]
    for device in canary:
        report(device, v2)
    now += timedelta(minutes=1)
    alive(Device.objects.all(), now)
    scheduler.tick(now=now)  # all active: the soak starts now
    # Twelve minutes of the same scenes: the canary 15 % slower than its control on 1.0.0, which
    # a fixed 20 % threshold on the p95 passes.
    for m in range(12):
        at = now + timedelta(minutes=m)
        for i, device in enumerate(canary):
            window(device, at - timedelta(minutes=30), v1, seed=1000 + m * 10 + i)
            window(device, at, v2, latency_ms=23.0, seed=m * 10 + i)
        for i, device in enumerate(control):
            window(device, at, v1, latency_ms=20.0, seed=500 + m * 10 + i)
    now += timedelta(minutes=12)
    alive(Device.objects.all(), now)
    scheduler.tick(now=now)

    rollout.refresh_from_db()
    assert rollout.state == Rollout.REVERTED, rollout.halt_reason
    results = {g.gate: g for g in GateResult.objects.filter(stage__rollout=rollout)}
    assert results["latency_p95_ms_regression"].verdict == "pass"
    judged = results["canary_analysis"]
    assert (judged.verdict, judged.details["control"], judged.details["control_devices"]) == ("fail", "matched", 5)
    latency = next(m for m in judged.details["metrics"] if m["name"] == "latency_p95_ms")
    assert latency["verdict"] == "fail" and latency["effect"] == pytest.approx(0.15, abs=0.03)
    assert len(running_v2(fleet_on_v1)) == 0


@pytest.mark.django_db
def test_a_stage_left_without_devices_by_a_small_target_passes_through(versions, fleet_on_v1, site):
    v1, v2 = versions
    two = fleet_on_v1[:2]
    rollout = services.create(
        version=v2,
        target={"sites": [site.slug]},
        plan={
            "stages": [{"kind": "count", "value": 1}, {"kind": "count", "value": 10}, {"kind": "percent", "value": 100}]
        },
        gates={"soak_s": 60},
        actor="ci",
    )
    assert [rollout.devices.filter(stage_index=i).count() for i in range(3)] == [1, 5, 0]

    drive(rollout, v1, v2)

    rollout.refresh_from_db()
    assert rollout.state == Rollout.COMPLETED, rollout.halt_reason
    assert rollout.stages.get(index=2).state == RolloutStage.PASSED
    assert len(running_v2(two)) == 2

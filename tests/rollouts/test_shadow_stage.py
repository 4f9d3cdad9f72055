"""A shadow stage: the candidate runs beside the model on the stage's devices and is judged before it acts anywhere."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from django.utils import timezone

from agent.kernel import histogram, protocol
from fleet.models import Device
from registry.models import ModelVersion
from rollouts import scheduler, services
from rollouts.models import GateResult, Rollout, RolloutStage
from telemetry.models import Resolution, Scope, WindowRollup
from tests.rollouts.conftest import alive, report

pytestmark = pytest.mark.django_db

PLAN = {"stages": [{"kind": "count", "value": 2, "shadow": True}, {"kind": "percent", "value": 100}]}
GATES = {"shadow_s": 600, "soak_s": 60, "min_shadow_frames": 100, "min_shadow_agreement": 0.9}


def shadow_minutes(device: Device, start: datetime, minutes: int, *, compared: int, agreed: int) -> None:
    """Minute rollups of a device shadowing: what the rollup task writes from its windows' shadow blocks."""
    WindowRollup.objects.bulk_create(
        WindowRollup(
            resolution=Resolution.MINUTE,
            scope=Scope.DEVICE,
            key=device.device_id,
            model_name="parts",
            model_version="1.0.0",
            bucket=start + timedelta(minutes=m),
            devices=1,
            windows=1,
            frames=compared,
            shadow_frames=compared,
            shadow_compared=compared,
            shadow_agreed=agreed,
            shadow_latency=histogram.LatencyHistogram.of([25.0] * compared).to_wire(),
        )
        for m in range(minutes)
    )


def signed(device: Device) -> protocol.Desired:
    device.refresh_from_db()
    return protocol.Desired.model_validate(device.desired_document)


def start(v2: ModelVersion) -> Rollout:
    return services.create(
        version=v2, target={"running_model": "parts"}, plan=PLAN, gates=GATES, actor="ci", reason="shadow first"
    )


def shadowing(rollout: Rollout, now: datetime) -> list[Device]:
    scheduler.tick(now=now)
    stage = rollout.stages.get(index=0)
    assert stage.state == RolloutStage.SHADOWING
    return [entry.device for entry in rollout.devices.filter(stage_index=0).select_related("device")]


def test_a_candidate_that_disagrees_with_production_is_halted_before_it_acts_anywhere(versions, fleet_on_v1):
    _, v2 = versions
    rollout = start(v2)
    now = timezone.now().replace(second=0, microsecond=0)

    stage_devices = shadowing(rollout, now)

    for device in stage_devices:
        document = signed(device)
        assert document.shadow is not None and document.shadow.version == "2.0.0"
        assert document.model is not None and document.model.version == "1.0.0", "the model in service stays"
        shadow_minutes(device, now, 10, compared=60, agreed=30)
    alive(fleet_on_v1, now + timedelta(minutes=11))
    scheduler.tick(now=now + timedelta(minutes=11))

    rollout.refresh_from_db()
    assert rollout.state == Rollout.HALTED and "shadow_agreement" in rollout.halt_reason
    agreement = GateResult.objects.get(stage__rollout=rollout, gate="shadow_agreement")
    assert (agreement.verdict, agreement.value, agreement.threshold) == ("fail", 0.5, 0.9)
    assert all(signed(d).shadow is None for d in stage_devices), "the shadow is stopped"
    assert {signed(d).model.version for d in fleet_on_v1} == {"1.0.0"}, "no device was ever sent 2.0.0"


def test_a_candidate_that_agrees_goes_on_to_install_on_the_same_devices(versions, fleet_on_v1):
    _, v2 = versions
    rollout = start(v2)
    now = timezone.now().replace(second=0, microsecond=0)
    stage_devices = shadowing(rollout, now)
    for device in stage_devices:
        shadow_minutes(device, now, 10, compared=60, agreed=59)

    alive(fleet_on_v1, now + timedelta(minutes=11))
    scheduler.tick(now=now + timedelta(minutes=11))
    stage = rollout.stages.get(index=0)
    assert stage.state == RolloutStage.PENDING and stage.shadow_passed_at is not None
    assert GateResult.objects.get(stage=stage, gate="shadow_agreement").verdict == "pass"

    scheduler.tick(now=now + timedelta(minutes=12))

    for device in stage_devices:
        document = signed(device)
        assert document.model is not None and document.model.version == "2.0.0" and document.shadow is None
        report(device, v2)
    assert rollout.stages.get(index=0).state == RolloutStage.INSTALLING


def test_too_few_shadow_frames_runs_the_shadow_longer_then_halts(versions, fleet_on_v1):
    _, v2 = versions
    rollout = start(v2)
    now = timezone.now().replace(second=0, microsecond=0)
    stage_devices = shadowing(rollout, now)
    shadow_minutes(stage_devices[0], now, 1, compared=10, agreed=10)

    scheduler.tick(now=now + timedelta(minutes=11))
    stage = rollout.stages.get(index=0)
    assert stage.state == RolloutStage.SHADOWING and stage.soak_extensions == 1

    scheduler.tick(now=now + timedelta(minutes=22))
    rollout.refresh_from_db()
    assert rollout.state == Rollout.HALTED and "shadow_frames" in rollout.halt_reason


def test_aborting_during_the_shadow_stops_it(versions, fleet_on_v1):
    _, v2 = versions
    rollout = start(v2)
    stage_devices = shadowing(rollout, timezone.now())

    services.abort(rollout, actor="operator", reason="wrong candidate")

    assert all(signed(d).shadow is None for d in stage_devices)
    assert rollout.stages.get(index=0).state == RolloutStage.ABORTED


def test_a_plan_says_shadow_with_a_boolean_only(versions, fleet_on_v1, token_client):
    bad = {"stages": [{"kind": "count", "value": 1, "shadow": "yes"}, {"kind": "percent", "value": 100}]}
    answer = token_client("rollout").post(
        "/api/v1/rollouts/",
        {"model": "parts", "version": "2.0.0", "target": {"running_model": "parts"}, "plan": bad},
        format="json",
    )
    assert answer.status_code == 400 and list(answer.json()["fields"]) == ["plan.stages[0].shadow"]

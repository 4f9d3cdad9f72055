"""Rollout workflows that span models: creating a rollout (choosing and staging its devices) and operator actions.

The scheduler's step (``rollouts.scheduler``) is the only place devices are
sent the version; the actions here only change states, under the same row
lock the scheduler takes, and each is written to the audit log.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from core.errors import ServiceError
from core.models import AuditLog
from fleet import access
from fleet import services as fleet
from fleet.models import Device
from registry.models import Bundle, ModelVersion
from rollouts import plan as plans
from rollouts.models import Rollout, RolloutDevice, RolloutStage, RolloutTemplate

FP32, INT8 = "cpu-fp32", "cpu-int8"


def target_devices(target: dict[str, Any]) -> QuerySet[Device]:
    """The enrolled, not revoked devices a target spec names (every given key narrows it)."""
    devices = Device.objects.filter(revoked_at__isnull=True).select_related("site")
    if "sites" in target:
        devices = devices.filter(site__slug__in=target["sites"])
    if "hardware_profiles" in target:
        devices = devices.filter(hardware_profile__in=target["hardware_profiles"])
    if "labels" in target:
        devices = devices.filter(labels__contains=target["labels"])
    if "running_model" in target:
        devices = devices.filter(reported__model_name=target["running_model"])
    return devices


def _order_key(rollout_seed: str, device: Device) -> tuple[bool, str]:
    # Online devices first (a canary that is off cannot prove anything), then a
    # stable hash: the same target always splits the same way for one rollout,
    # and different rollouts do not always pick the same canary.
    digest = hashlib.sha256(f"{rollout_seed}:{device.device_id}".encode()).hexdigest()
    return (not device.online, digest)


def split_stages(stages: Sequence[plans.Stage], devices: Sequence[Device], seed: str) -> list[list[Device]]:
    """The devices of each stage, deterministically; every stage gets at least one while any remain."""
    remaining = sorted(devices, key=lambda d: _order_key(seed, d))
    total = len(remaining)
    out: list[list[Device]] = []
    done = 0
    for stage in stages:
        if stage.kind == "count":
            take = stage.value
        elif stage.kind == "percent":
            take = max(math.ceil(total * stage.value / 100) - done, 1)
        else:
            # A site wave: the next whole sites, in the order their first device comes.
            sites: list[int] = []
            for device in remaining:
                if device.site_id not in sites:
                    sites.append(device.site_id)
            wave = set(sites[: stage.value])
            chosen = [d for d in remaining if d.site_id in wave]
            remaining = [d for d in remaining if d.site_id not in wave]
            out.append(chosen)
            done += len(chosen)
            continue
        chosen, remaining = remaining[:take], remaining[take:]
        out.append(chosen)
        done += len(chosen)
    return out


def _previous(device: Device, model_name: str, versions: dict[str, ModelVersion]) -> tuple[ModelVersion | None, str]:
    """What the device runs of this model (reported), else what it was sent (desired): where a revert goes."""
    reported = device.reported if isinstance(device.reported, dict) else {}
    if reported.get("model_name") == model_name and reported.get("model_version") in versions:
        sent = (device.desired or {}).get("model") or {}
        same = sent.get("name") == model_name and sent.get("version") == reported["model_version"]
        return versions[reported["model_version"]], (sent.get("target") if same else None) or FP32
    sent = (device.desired or {}).get("model") or {}
    if sent.get("name") == model_name and sent.get("version") in versions:
        return versions[sent["version"]], sent.get("target") or FP32
    return None, ""


def create(
    *,
    version: ModelVersion,
    target: Any,
    plan: Any = None,
    template: RolloutTemplate | None = None,
    gates: Any = None,
    actor: Any,
    reason: str = "",
) -> Rollout:
    """A new rollout, its stages and the devices of each, chosen now; the scheduler starts it on its next tick."""
    if plan is None and template is None:
        raise ServiceError(
            "invalid_plan", "Give a plan or a template.", 400, fields={"plan": ["Give a plan or a template."]}
        )
    plan = plan if plan is not None else template.plan if template else None
    stages = plans.parse_plan(plan)
    target = plans.parse_target(target)
    overrides = plans.parse_gates(gates)
    if version.is_deprecated:
        raise ServiceError("version_deprecated", f"{version} is deprecated and cannot be rolled out.", 409)
    bundles = set(Bundle.objects.filter(version=version).values_list("target", flat=True))
    if FP32 not in bundles:
        message = f"{version} has no {FP32} bundle."
        raise ServiceError("no_bundle", message, 400, fields={"version": [message]})
    with transaction.atomic():
        devices = list(target_devices(target))
        if not devices:
            message = "No enrolled device matches the target."
            raise ServiceError("empty_target", message, 400, fields={"target": [message]})
        access.require_sites(actor, {device.site_id for device in devices}, "start a rollout")
        busy = (
            RolloutDevice.objects.filter(device__in=devices, rollout__state__in=Rollout.ACTIVE)
            .values_list("device__device_id", flat=True)
            .order_by("device__device_id")[:5]
        )
        if busy:
            raise ServiceError("devices_in_rollout", f"Devices already in an active rollout: {', '.join(busy)}.", 409)
        rollout = Rollout.objects.create(
            version=version,
            template=template,
            target=target,
            plan=plan,
            gate_overrides=overrides,
            created_by=actor if getattr(actor, "is_authenticated", False) and hasattr(actor, "pk") else None,
            reason=reason,
        )
        versions = {v.version: v for v in ModelVersion.objects.filter(model=version.model)}
        int8 = INT8 in bundles
        profiles = set(settings.ROLLOUT_INT8_HARDWARE_PROFILES)
        rows = []
        for index, chosen in enumerate(split_stages(stages, devices, seed=str(rollout.pk))):
            for device in chosen:
                before, before_target = _previous(device, version.model.name, versions)
                rows.append(
                    RolloutDevice(
                        rollout=rollout,
                        device=device,
                        stage_index=index,
                        from_version=before,
                        from_target=before_target,
                        target=INT8 if int8 and device.hardware_profile in profiles else FP32,
                    )
                )
        RolloutDevice.objects.bulk_create(rows)
        RolloutStage.objects.bulk_create(
            RolloutStage(
                rollout=rollout,
                index=i,
                kind=s.kind,
                value=s.value,
                requires_approval=s.requires_approval,
                shadow=s.shadow,
            )
            for i, s in enumerate(stages)
        )
        AuditLog.record(
            actor=actor,
            action="rollout.create",
            target=rollout,
            reason=reason,
            model=version.model.name,
            version=version.version,
            devices=len(rows),
            template=template.name if template else None,
        )
    return rollout


def _locked(rollout: Rollout, *, actor: Any, action: str) -> Rollout:
    """The rollout, locked, once ``actor`` is known to operate every site it touches."""
    access.require_sites(actor, site_ids(rollout), action)
    return Rollout.objects.select_for_update().select_related("version__model").get(pk=rollout.pk)


def site_ids(rollout: Rollout) -> set[int | None]:
    """The sites of the devices a rollout touches: who may act on it operates all of them."""
    return set(RolloutDevice.objects.filter(rollout=rollout).values_list("device__site_id", flat=True).distinct())


def pause(rollout: Rollout, *, actor: Any, reason: str = "") -> Rollout:
    """Hold the rollout where it is: the scheduler leaves it alone until it is resumed."""
    with transaction.atomic():
        row = _locked(rollout, actor=actor, action="pause this rollout")
        row.advance_state(Rollout.PAUSED)
        row.save(update_fields=["state", "updated_at"])
        AuditLog.record(actor=actor, action="rollout.pause", target=row, reason=reason)
    return row


def resume(rollout: Rollout, *, actor: Any, reason: str = "") -> Rollout:
    """Take a paused rollout back to running; or give a halted one's failed stage a second judgement.

    A rollout halted by its gates (policy ``pause``, or a shadow stage) kept
    its stage's devices where they were. Resuming it judges that stage again
    from now: a soaked stage soaks afresh (``soak_s``) and its gates are read
    over the new stretch only; a shadow stage runs its shadow again. A stage
    that failed before its soak (installs failed, devices silent) is not
    judged twice: abort it, or roll its sites back.
    """
    now = timezone.now()
    with transaction.atomic():
        row = _locked(rollout, actor=actor, action="resume this rollout")
        if row.state not in (Rollout.PAUSED, Rollout.HALTED):
            raise ServiceError(
                "invalid_state", f"Only a paused or halted rollout resumes; this one is {row.state}.", 409
            )
        data: dict[str, Any] = {}
        if row.state == Rollout.HALTED:
            stage = row.stages.select_for_update().get(index=row.current_stage)
            data = {"from": "halted", "stage": stage.index}
            _judge_again(row, stage, now)
        row.advance_state(Rollout.RUNNING)
        row.halt_reason = ""
        row.save(update_fields=["state", "started_at", "halt_reason", "updated_at"])
        AuditLog.record(actor=actor, action="rollout.resume", target=row, reason=reason, **data)
    return row


def _judge_again(rollout: Rollout, stage: RolloutStage, now: datetime) -> None:
    if stage.shadow and stage.shadow_passed_at is None:
        # Halted in shadow: nothing was installed; the next tick runs the shadow again.
        stage.state = RolloutStage.PENDING
    elif stage.all_active_at is not None:
        stage.state, stage.all_active_at = RolloutStage.SOAKING, now
        stage.soak_until = now + timedelta(seconds=int(rollout.gates()["soak_s"]))
    else:
        message = f"Stage {stage.index} failed before its soak (installs failed or devices silent); abort it instead."
        raise ServiceError("invalid_state", message, 409)
    stage.verdict, stage.soak_extensions, stage.finished_at = "", 0, None
    stage.save(update_fields=["state", "all_active_at", "soak_until", "verdict", "soak_extensions", "finished_at"])


def stop_shadows(rollout: Rollout, stage: RolloutStage) -> None:
    """End the candidate's shadow on a stage's devices (judged, aborted, or its site rolled back)."""
    entries = rollout.devices.filter(stage_index=stage.index).select_related("device")
    actor = f"rollout:{rollout.pk}"
    fleet.assign_shadows([fleet.Assignment(entry.device) for entry in entries], None, actor=actor)


def abort(rollout: Rollout, *, actor: Any, reason: str = "") -> Rollout:
    """Stop for good; devices keep what they were sent (a site rollback or a new rollout moves them)."""
    now = timezone.now()
    with transaction.atomic():
        row = _locked(rollout, actor=actor, action="abort this rollout")
        if row.state == Rollout.ABORTED:
            return row
        row.advance_state(Rollout.ABORTED, at=now)
        row.save(update_fields=["state", "finished_at", "updated_at"])
        for stage in row.stages.filter(state=RolloutStage.SHADOWING):
            stop_shadows(row, stage)
        row.stages.filter(
            state__in=(
                RolloutStage.PENDING,
                RolloutStage.WAITING_APPROVAL,
                RolloutStage.SHADOWING,
                RolloutStage.INSTALLING,
                RolloutStage.SOAKING,
            )
        ).update(state=RolloutStage.ABORTED, finished_at=now)
        AuditLog.record(actor=actor, action="rollout.abort", target=row, reason=reason)
    return row


def approve(rollout: Rollout, *, actor: Any, reason: str = "") -> Rollout:
    """Let the stage that waits for a person go ahead; the next tick sends it the version."""
    with transaction.atomic():
        row = _locked(rollout, actor=actor, action="approve this rollout")
        if row.state not in (Rollout.RUNNING, Rollout.PAUSED):
            raise ServiceError("invalid_state", f"A {row.state} rollout has no stage to approve.", 409)
        stage = row.stages.select_for_update().get(index=row.current_stage)
        # A stage that requires approval may be approved ahead, before the tick reaches it.
        waits = stage.state == RolloutStage.WAITING_APPROVAL or (
            stage.state == RolloutStage.PENDING and stage.requires_approval and stage.approved_at is None
        )
        if not waits:
            raise ServiceError(
                "nothing_to_approve", f"Stage {stage.index} is {stage.state}, not waiting for approval.", 409
            )
        user = actor if getattr(actor, "is_authenticated", False) and hasattr(actor, "pk") else None
        stage.approved_by = user
        stage.approved_at = timezone.now()
        stage.save(update_fields=["approved_by", "approved_at"])
        AuditLog.record(actor=actor, action="rollout.approve", target=row, reason=reason, stage=stage.index)
    return row

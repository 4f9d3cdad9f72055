"""The scheduler's tick: one step of every running rollout, each in its own transaction under its row lock.

Safe with several workers ticking at once: a rollout row another worker holds
is skipped (``skip_locked``), not waited for, and each step re-reads the row
it locked, so a step is taken once. A worker killed mid-step leaves nothing:
sending a stage's devices the version (their signed desired documents, the
audit rows) and the stage's new state commit together or not at all. Desired
documents reach the broker only after that commit (``fleet.desired``).
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from core.errors import ServiceError
from core.models import AuditLog
from fleet import services as fleet
from registry.variants import FP32
from rollouts import gates
from rollouts.models import GateResult, Rollout, RolloutDevice, RolloutStage
from rollouts.services import stop_shadows
from telemetry.baseline import FAILED_PHASES, compare_to_baseline, shadow_summary

log = logging.getLogger(__name__)


def tick(*, now: datetime | None = None) -> int:
    """Take one step of every pending or running rollout; returns how many were stepped by this worker."""
    now = now or timezone.now()
    stepped = 0
    pks = list(Rollout.objects.filter(state__in=(Rollout.PENDING, Rollout.RUNNING)).values_list("pk", flat=True))
    for pk in pks:
        with transaction.atomic():
            rollout = (
                Rollout.objects.select_for_update(skip_locked=True, of=("self",))
                .select_related("version__model", "template")
                .filter(pk=pk, state__in=(Rollout.PENDING, Rollout.RUNNING))
                .first()
            )
            if rollout is None:
                continue
            step(rollout, now)
            stepped += 1
    return stepped


def _actor(rollout: Rollout) -> str:
    return f"rollout:{rollout.pk}"


def step(rollout: Rollout, now: datetime) -> None:
    """One move of a locked rollout: start, send a stage, watch it install, judge it after its soak."""
    if rollout.state == Rollout.PENDING:
        rollout.advance_state(Rollout.RUNNING, at=now)
        rollout.save(update_fields=["state", "started_at", "updated_at"])
        AuditLog.record(actor=_actor(rollout), action="rollout.start", target=rollout)
    stage = rollout.stages.select_for_update().get(index=rollout.current_stage)
    if stage.state in (RolloutStage.PENDING, RolloutStage.WAITING_APPROVAL):
        _send(rollout, stage, now)
    elif stage.state == RolloutStage.SHADOWING and now >= (stage.shadow_until or now):
        _judge_shadow(rollout, stage, now)
    elif stage.state == RolloutStage.INSTALLING:
        _watch(rollout, stage, now)
    elif stage.state == RolloutStage.SOAKING and now >= (stage.soak_until or now):
        _judge(rollout, stage, now)


def _send(rollout: Rollout, stage: RolloutStage, now: datetime) -> None:
    if stage.requires_approval and stage.approved_at is None:
        if stage.state != RolloutStage.WAITING_APPROVAL:
            stage.state = RolloutStage.WAITING_APPROVAL
            stage.save(update_fields=["state"])
        return
    entries = list(
        rollout.devices.filter(stage_index=stage.index, state=RolloutDevice.PENDING).select_related("device__site")
    )
    if not entries and not rollout.devices.filter(stage_index=stage.index).exists():
        # Earlier stages took every device (a small target): nothing to send or judge.
        _pass(rollout, stage, now)
        return
    if stage.shadow and stage.shadow_passed_at is None:
        _start_shadow(rollout, stage, entries, now)
        return
    sent = _release(rollout, entries, {}, now)
    if entries and not sent:
        return  # every site of the stage is outside its maintenance window: the stage waits, pending
    stage.state, stage.started_at = RolloutStage.INSTALLING, now
    stage.save(update_fields=["state", "started_at"])
    AuditLog.record(
        actor=_actor(rollout),
        action="rollout.stage_start",
        target=rollout,
        stage=stage.index,
        devices=len(sent),
        held=len(entries) - len(sent),
    )


def _release(
    rollout: Rollout, pending: list[RolloutDevice], downloading: dict[int, int], now: datetime
) -> list[RolloutDevice]:
    """Send the version to those of ``pending`` the sites let through now; returns them.

    A device waits (stays pending) while its site's maintenance window is
    closed at ``now``, or while ``max_concurrent_downloads_per_site`` of the
    site's devices (``downloading``: site pk -> devices sent and not yet active
    or failed) are still installing, or past the first ``ROLLOUT_SEND_CHUNK``
    let through; a later tick sends it. The devices let through are sent
    together, in a constant number of queries.
    """
    cap = int(rollout.gates()["max_concurrent_downloads_per_site"])
    in_flight = dict(downloading)
    open_sites: dict[int, bool] = {}
    chosen: list[RolloutDevice] = []
    for entry in pending:
        if len(chosen) >= settings.ROLLOUT_SEND_CHUNK:
            break
        site = entry.device.site
        if site.pk not in open_sites:
            open_sites[site.pk] = site.window_open(now)
        if not open_sites[site.pk] or (cap and in_flight.get(site.pk, 0) >= cap):
            continue
        in_flight[site.pk] = in_flight.get(site.pk, 0) + 1
        chosen.append(entry)
    if not chosen:
        return []
    # One signed document per device, in a constant number of queries whatever the stage's size.
    outcome = fleet.assign_models(
        [fleet.Assignment(entry.device, entry.target) for entry in chosen], rollout.version, actor=_actor(rollout)
    )
    for entry in chosen:
        result = outcome[entry.device.pk]
        entry.sent_at = now
        if isinstance(result, ServiceError):
            # Refused before sending (agent too old, bundle expired): an install that failed.
            entry.state, entry.error = RolloutDevice.FAILED, result.detail
        else:
            entry.generation, entry.state = result, RolloutDevice.ASSIGNED
    RolloutDevice.objects.bulk_update(chosen, ["state", "generation", "sent_at", "error", "updated_at"])
    return chosen


def _start_shadow(rollout: Rollout, stage: RolloutStage, entries: list[RolloutDevice], now: datetime) -> None:
    """Run the candidate beside the model on the stage's devices; nothing acts on it, nothing is installed."""
    assignments = [fleet.Assignment(entry.device, entry.target) for entry in entries]
    outcome = fleet.assign_shadows(assignments, rollout.version, actor=_actor(rollout))
    refused = {pk: r for pk, r in outcome.items() if isinstance(r, ServiceError)}
    stage.state, stage.started_at, stage.shadow_started_at = RolloutStage.SHADOWING, now, now
    stage.shadow_until = now + timedelta(seconds=int(rollout.gates()["shadow_s"]))
    stage.save(update_fields=["state", "started_at", "shadow_started_at", "shadow_until"])
    AuditLog.record(
        actor=_actor(rollout),
        action="rollout.shadow_start",
        target=rollout,
        stage=stage.index,
        devices=len(entries) - len(refused),
        refused=len(refused),
    )


def _judge_shadow(rollout: Rollout, stage: RolloutStage, now: datetime) -> None:
    """Judge the candidate's agreement on the stage's devices; install it (next tick) or halt before it acts."""
    settings = rollout.gates()
    entries = list(rollout.devices.filter(stage_index=stage.index).select_related("device"))
    names = [entry.device.device_id for entry in entries]
    # From the minute the shadow began in: only a candidate's frames count as shadow frames, so nothing before mixes in.
    started = (stage.shadow_started_at or now).replace(second=0, microsecond=0)
    summary = shadow_summary(names, started, now)
    outcomes = gates.shadow_agreement(summary, settings)
    _store(stage, outcomes, now)
    verdicts = {o.verdict for o in outcomes}
    if gates.FAIL not in verdicts and gates.PENDING in verdicts:
        if stage.soak_extensions < int(settings["max_soak_extensions"]):
            stage.soak_extensions += 1
            stage.shadow_until = now + timedelta(seconds=int(settings["shadow_s"]))
            stage.save(update_fields=["soak_extensions", "shadow_until"])
            return
    stop_shadows(rollout, stage)
    if verdicts != {gates.PASS}:
        failing = ", ".join(o.gate for o in outcomes if o.verdict != gates.PASS)
        _fail(rollout, stage, now, f"shadow gates {failing} did not pass at stage {stage.index}", revert=False)
        return
    # Proven in shadow: the next tick installs it on these devices, as any stage.
    stage.state, stage.shadow_passed_at, stage.soak_extensions = RolloutStage.PENDING, now, 0
    stage.save(update_fields=["state", "shadow_passed_at", "soak_extensions"])
    AuditLog.record(actor=_actor(rollout), action="rollout.shadow_passed", target=rollout, stage=stage.index)


def _watch(rollout: Rollout, stage: RolloutStage, now: datetime) -> None:
    """Mark each stage device active or failed from what it reports and send those held back that may go now.

    Once every device of the stage was sent and is active, failed or silent: soak, or fail the stage.
    """
    settings = rollout.gates()
    entries = list(rollout.devices.filter(stage_index=stage.index).select_related("device__site"))
    version = rollout.version
    changed = []
    for entry in entries:
        if entry.state != RolloutDevice.ASSIGNED:
            continue
        reported = entry.device.reported if isinstance(entry.device.reported, dict) else {}
        if reported.get("generation", 0) < (entry.generation or 0):
            continue  # still on an older desired document
        runs = reported.get("model_name") == version.model.name and reported.get("model_version") == version.version
        if reported.get("phase") == "active" and runs:
            entry.state = RolloutDevice.ACTIVE
        elif reported.get("phase") in FAILED_PHASES:
            entry.state, entry.error = RolloutDevice.FAILED, str(reported.get("error") or reported.get("phase"))[:2000]
        else:
            continue
        changed.append(entry)
    # Each device has the timeout from when it was sent: a window or a cap may have held it long after the stage began.
    timeout = timedelta(seconds=int(settings["activation_timeout_s"]))
    for entry in entries:
        if entry.state == RolloutDevice.ASSIGNED and now >= (entry.sent_at or stage.started_at or now) + timeout:
            entry.state = RolloutDevice.SILENT
            changed.append(entry)
    RolloutDevice.objects.bulk_update(changed, ["state", "error", "updated_at"])
    held = [e for e in entries if e.state == RolloutDevice.PENDING]
    if held:
        downloading: dict[int, int] = {}
        for entry in entries:
            if entry.state == RolloutDevice.ASSIGNED:
                downloading[entry.device.site_id] = downloading.get(entry.device.site_id, 0) + 1
        sent = _release(rollout, held, downloading, now)
        if sent:
            AuditLog.record(
                actor=_actor(rollout),
                action="rollout.stage_send",
                target=rollout,
                stage=stage.index,
                devices=len(sent),
                held=len(held) - len(sent),
            )
    if any(e.state in (RolloutDevice.PENDING, RolloutDevice.ASSIGNED) for e in entries):
        return  # some devices still installing, or not sent yet
    names = [e.device.device_id for e in entries]
    failed = [e.device.device_id for e in entries if e.state == RolloutDevice.FAILED]
    silent = [e.device.device_id for e in entries if e.state == RolloutDevice.SILENT]
    reached = len(entries) - len(silent)
    activation = gates.Outcome(
        "activation",
        float(reached),
        float(len(entries)),
        gates.FAIL if silent else gates.PASS,
        {"silent": silent[:50], "timeout_s": settings["activation_timeout_s"]},
    )
    installs = gates.failed_installs(names, failed, float(settings["max_failed_installs_pct"]))
    _store(stage, [activation, installs], now)
    if gates.FAIL in (activation.verdict, installs.verdict):
        _fail(
            rollout, stage, now, f"gate {'activation' if silent else 'failed_installs'} failed at stage {stage.index}"
        )
        return
    stage.state, stage.all_active_at = RolloutStage.SOAKING, now
    stage.soak_until = now + timedelta(seconds=int(settings["soak_s"]))
    stage.save(update_fields=["state", "all_active_at", "soak_until"])


def _judge(rollout: Rollout, stage: RolloutStage, now: datetime) -> None:
    settings = rollout.gates()
    entries = list(rollout.devices.filter(stage_index=stage.index).select_related("device__site"))
    active = [e for e in entries if e.state == RolloutDevice.ACTIVE]
    since = stage.all_active_at or now
    by_site: dict[str, list[str]] = {}
    budgets: dict[str, int] = {}
    for entry in active:
        site = entry.device.site
        by_site.setdefault(site.slug, []).append(entry.device.device_id)
        if site.latency_budget_ms:
            budgets[site.slug] = site.latency_budget_ms
    names = [e.device.device_id for e in active]
    candidate = (rollout.version.model.name, rollout.version.version)
    data = gates.StageData(
        devices=[e.device.device_id for e in entries],
        active=names,
        # The stretch before the stage first sent the version: a stage judged again after a resume still
        # compares with the time before its devices changed version.
        comparison=compare_to_baseline(
            names, since, now=now, candidate=candidate, baseline_until=stage.started_at or since
        ),
        settings=settings,
        since=since,
        now=now,
        active_by_site=by_site,
        budgets=budgets,
        model=candidate,
        control_candidates=list(
            rollout.devices.filter(state=RolloutDevice.PENDING).values_list("device__device_id", flat=True)
        ),
    )
    outcomes = [o for o in (gate(data) for gate in gates.SOAK_GATES) if o is not None]
    _store(stage, outcomes, now)
    can_extend = stage.soak_extensions < int(settings["max_soak_extensions"])
    verdict = gates.verdict(outcomes, final=not can_extend)
    if verdict == gates.MARGINAL and can_extend:
        stage.soak_extensions += 1
        stage.soak_until = now + timedelta(seconds=int(settings["soak_s"]))
        stage.verdict = gates.MARGINAL
        stage.save(update_fields=["soak_extensions", "soak_until", "verdict"])
        return
    if verdict != gates.PASS:
        # Still marginal after every extension: not proven good, so not sent further.
        failing = [o.gate for o in outcomes if o.verdict != gates.PASS and not o.abstains]
        _fail(rollout, stage, now, f"gates {', '.join(failing)} did not pass at stage {stage.index}")
        return
    _pass(rollout, stage, now)


def _pass(rollout: Rollout, stage: RolloutStage, now: datetime) -> None:
    stage.state, stage.verdict, stage.finished_at = RolloutStage.PASSED, gates.PASS, now
    stage.save(update_fields=["state", "verdict", "finished_at"])
    AuditLog.record(actor=_actor(rollout), action="rollout.stage_passed", target=rollout, stage=stage.index)
    if stage.index + 1 >= rollout.stages.count():
        rollout.advance_state(Rollout.COMPLETED, at=now)
        rollout.save(update_fields=["state", "finished_at", "updated_at"])
        AuditLog.record(actor=_actor(rollout), action="rollout.complete", target=rollout)
        return
    rollout.current_stage = stage.index + 1
    rollout.save(update_fields=["current_stage", "updated_at"])


def _store(stage: RolloutStage, outcomes: list[gates.Outcome], now: datetime) -> None:
    GateResult.objects.bulk_create(
        GateResult(
            stage=stage,
            gate=o.gate,
            value=o.value,
            threshold=o.threshold,
            verdict=o.verdict,
            details=o.details,
            evaluated_at=now,
        )
        for o in outcomes
    )


def _fail(rollout: Rollout, stage: RolloutStage, now: datetime, why: str, *, revert: bool = True) -> None:
    """Halt; by the ``on_failure`` policy, send the stage's devices back to what they ran before.

    ``revert=False``: nothing was installed (a shadow stage), so halting is all there is to do.
    """
    stage.state, stage.verdict, stage.finished_at = RolloutStage.FAILED, gates.FAIL, now
    stage.save(update_fields=["state", "verdict", "finished_at"])
    rollout.halt_reason = why
    if not revert or rollout.gates()["on_failure"] != "revert":
        rollout.advance_state(Rollout.HALTED, at=now)
        rollout.save(update_fields=["state", "halt_reason", "updated_at"])
        AuditLog.record(actor=_actor(rollout), action="rollout.halt", target=rollout, reason=why)
        return
    entries = list(
        rollout.devices.filter(stage_index=stage.index)
        .exclude(state=RolloutDevice.PENDING)
        .select_related("device", "from_version__model")
    )
    reverted, kept = [], []
    by_version: dict[int, list[RolloutDevice]] = {}
    for entry in entries:
        if entry.from_version is None:
            kept.append(entry.device.device_id)
        else:
            by_version.setdefault(entry.from_version.pk, []).append(entry)
    for group in by_version.values():
        outcome = fleet.assign_models(
            [fleet.Assignment(e.device, e.from_target or FP32, rollback=True) for e in group],
            group[0].from_version,
            actor=_actor(rollout),
        )
        for entry in group:
            result = outcome[entry.device.pk]
            if isinstance(result, ServiceError):
                entry.error = f"revert refused: {result.detail}"[:2000]
                kept.append(entry.device.device_id)
                continue
            entry.generation, entry.state = result, RolloutDevice.REVERTED
            reverted.append(entry)
    RolloutDevice.objects.bulk_update(entries, ["state", "generation", "error", "updated_at"])
    rollout.advance_state(Rollout.REVERTED, at=now)
    rollout.save(update_fields=["state", "halt_reason", "finished_at", "updated_at"])
    AuditLog.record(
        actor=_actor(rollout),
        action="rollout.revert",
        target=rollout,
        reason=why,
        stage=stage.index,
        reverted=len(reverted),
        without_previous_version=kept[:50],
    )
    log.warning("rollout reverted", extra={"rollout": rollout.pk, "reason": why, "reverted": len(reverted)})

"""Rollbacks in one action: a site back to its last known-good version, or a version fleet-wide to the one before.

A version is known-good at a site once a rollout that sent it there completed
(every stage passed) and no site rollback has taken the site away from it
since. A rollout that is still running, halted, reverted or aborted proves
nothing yet, and the rollback stops every rollout touching the site anyway.

The action is idempotent: devices already sent the known-good version are left
alone, and a second call with nothing to change changes nothing. Offline
devices are included: their desired document is retained and signed, and they
converge when they return.

A fleet-wide rollback of a version (an emergency: it misbehaves everywhere)
sends every device that was sent it back to the newest older version a
rollout completed, stops its rollouts and deprecates it, so nothing sends it
again; the same guarantees hold.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from django.db import transaction
from django.utils import timezone

from core.errors import ServiceError
from core.models import AuditLog
from fleet import access
from fleet import services as fleet
from fleet.models import Device, Site
from registry.models import Bundle, ModelVersion
from registry.variants import FP32
from rollouts.models import Rollout, RolloutDevice, RolloutStage, SiteRollback
from rollouts.services import stop_shadows


@dataclass
class ModelPlan:
    model: str
    version: ModelVersion
    devices: list[Device] = field(default_factory=list)  # those to be sent it
    from_versions: list[str] = field(default_factory=list)
    offline: int = 0


@dataclass
class SitePlan:
    site: Site
    models: list[ModelPlan]
    rollouts: list[int]  # rollouts the action stops
    unknown: list[str]  # models run at the site with no known-good version there

    def answer(self, *, done: bool) -> dict[str, Any]:
        return {
            "site": self.site.slug,
            "done": done,
            "models": [
                {
                    "model": m.model,
                    "version": m.version.version,
                    "devices": len(m.devices),
                    "offline_devices": m.offline,
                    "from_versions": m.from_versions,
                }
                for m in self.models
            ],
            "stops_rollouts": self.rollouts,
            "without_known_good": self.unknown,
        }


def known_good(site: Site, model_name: str) -> ModelVersion | None:
    """The newest version of the model a completed rollout sent to this site and no site rollback left."""
    left = set()
    for row in SiteRollback.objects.filter(site=site, model_name=model_name).values_list("from_versions", flat=True):
        left.update(row)
    passed = (
        RolloutDevice.objects.filter(
            device__site=site,
            state=RolloutDevice.ACTIVE,
            rollout__state=Rollout.COMPLETED,
            rollout__version__model__name=model_name,
        )
        .exclude(rollout__version__version__in=left)
        .select_related("rollout__version__model")
        .order_by("-rollout__finished_at", "-rollout__pk")
        .first()
    )
    return passed.rollout.version if passed else None


def plan(site: Site) -> SitePlan:
    """What a rollback of the site would do now (the preview, and the action's own plan)."""
    devices = list(Device.objects.filter(site=site, revoked_at__isnull=True).order_by("device_id"))
    by_model: dict[str, list[Device]] = {}
    for device in devices:
        name = ((device.desired or {}).get("model") or {}).get("name")
        if isinstance(name, str):
            by_model.setdefault(name, []).append(device)
    models, unknown = [], []
    for name, members in sorted(by_model.items()):
        good = known_good(site, name)
        if good is None:
            unknown.append(name)
            continue
        move = [d for d in members if d.desired["model"].get("version") != good.version]
        models.append(
            ModelPlan(
                model=name,
                version=good,
                devices=move,
                from_versions=sorted({d.desired["model"].get("version") for d in move}),
                offline=sum(1 for d in move if not d.online),
            )
        )
    touching = (
        Rollout.objects.filter(state__in=(*Rollout.ACTIVE, Rollout.HALTED), devices__device__site=site)
        .distinct()
        .order_by("pk")
        .values_list("pk", flat=True)
    )
    return SitePlan(site=site, models=models, rollouts=list(touching), unknown=unknown)


def roll_back(site: Site, *, actor: Any, reason: str) -> SitePlan:
    """Stop every rollout touching the site, then send its devices their known-good version; all or nothing."""
    access.require_sites(actor, [site.pk], "roll this site back")
    _require_reason(reason, "site")
    now = timezone.now()
    with transaction.atomic():
        # The site row is the lock: two rollbacks of one site run one after the other.
        Site.objects.select_for_update().get(pk=site.pk)
        todo = plan(site)
        if not todo.models and todo.unknown:
            raise ServiceError(
                "no_known_good",
                f"No version of {', '.join(todo.unknown)} completed a rollout at {site.slug}; nothing to return to.",
                409,
            )
        _stop_rollouts(todo.rollouts, f"site {site.slug} rolled back: {reason}", actor=actor, now=now)
        for model in todo.models:
            if not model.devices:
                continue
            _send_back(model.devices, model.version, actor=actor)
            user = actor if getattr(actor, "is_authenticated", False) and hasattr(actor, "pk") else None
            SiteRollback.objects.create(
                site=site,
                model_name=model.model,
                from_versions=model.from_versions,
                to_version=model.version,
                devices=len(model.devices),
                stopped_rollouts=todo.rollouts,
                actor=user,
                actor_label=getattr(actor, "username", None) or str(actor),
                reason=reason,
            )
        AuditLog.record(actor=actor, action="site.rollback", target=site, reason=reason, **todo.answer(done=True))
    return todo


def _stop_rollouts(pks: list[int], why: str, *, actor: Any, now: Any) -> None:
    """Abort these rollouts (and any shadow they run): the rollback's version must not be sent on."""
    for rollout in Rollout.objects.select_for_update().filter(pk__in=pks).order_by("pk"):
        rollout.advance_state(Rollout.ABORTED, at=now)
        rollout.halt_reason = why[:2000]
        rollout.save(update_fields=["state", "finished_at", "halt_reason", "updated_at"])
        for stage in rollout.stages.filter(state=RolloutStage.SHADOWING):
            stop_shadows(rollout, stage)
        rollout.stages.exclude(state__in=(RolloutStage.PASSED, RolloutStage.FAILED)).update(
            state=RolloutStage.ABORTED, finished_at=now
        )
        AuditLog.record(actor=actor, action="rollout.abort", target=rollout, reason=rollout.halt_reason)


def _send_back(devices: list[Device], version: ModelVersion, *, actor: Any) -> None:
    """Send ``devices`` ``version`` (an explicit rollback where it is older than what each was sent), all or none."""
    targets = set(Bundle.objects.filter(version=version).values_list("target", flat=True))
    assignments = []
    for device in devices:
        sent = device.desired["model"]
        older = version.sequence < int(sent.get("sequence") or 0)
        target = sent.get("target") if sent.get("target") in targets else FP32
        assignments.append(fleet.Assignment(device, target, rollback=older))
    outcome = fleet.assign_models(assignments, version, actor=actor)
    refused = [result for result in outcome.values() if not isinstance(result, int)]
    if refused:
        raise refused[0]


# --- a version, fleet-wide ---------------------------------------------------------------------


@dataclass
class VersionPlan:
    version: ModelVersion
    to: ModelVersion | None
    devices: list[Device]
    rollouts: list[int]  # rollouts of the version the action stops

    def answer(self, *, done: bool) -> dict[str, Any]:
        return {
            "model": self.version.model.name,
            "version": self.version.version,
            "to_version": self.to.version if self.to else None,
            "done": done,
            "devices": len(self.devices),
            "offline_devices": sum(1 for d in self.devices if not d.online),
            "stops_rollouts": self.rollouts,
        }


def previous_good(version: ModelVersion) -> ModelVersion | None:
    """What a version goes back to: the newest older version a rollout completed, else the newest older one.

    Deprecated versions (one a fleet-wide rollback left, say) are never chosen.
    """
    older = ModelVersion.objects.filter(
        model_id=version.model_id, sequence__lt=version.sequence, deprecated_at__isnull=True
    ).select_related("model")
    proven = older.filter(rollouts__state=Rollout.COMPLETED).order_by("-sequence").first()
    return proven or older.order_by("-sequence").first()


def version_plan(version: ModelVersion) -> VersionPlan:
    """What a fleet-wide rollback of ``version`` would do now (the preview, and the action's own plan)."""
    devices = list(
        Device.objects.filter(
            revoked_at__isnull=True,
            desired__model__name=version.model.name,
            desired__model__version=version.version,
        ).order_by("device_id")
    )
    rollouts = Rollout.objects.filter(version=version, state__in=(*Rollout.ACTIVE, Rollout.HALTED)).order_by("pk")
    return VersionPlan(version, previous_good(version), devices, list(rollouts.values_list("pk", flat=True)))


def roll_back_version(version: ModelVersion, *, actor: Any, reason: str) -> VersionPlan:
    """Every device sent ``version`` goes back to the previous good one; its rollouts stop; it is deprecated.

    All or nothing, idempotent (a second call finds no device on it), offline
    devices included: their signed desired document waits for them.
    """
    access.require_admin(actor, "roll a version back across the fleet")
    _require_reason(reason, "version")
    now = timezone.now()
    with transaction.atomic():
        # The version row is the lock: two rollbacks of one version run one after the other.
        ModelVersion.objects.select_for_update().get(pk=version.pk)
        todo = version_plan(version)
        if todo.to is None:
            raise ServiceError("no_previous_version", f"{version} has no older version to return to.", 409)
        _stop_rollouts(todo.rollouts, f"{version} rolled back fleet-wide: {reason}", actor=actor, now=now)
        if todo.devices:
            _send_back(todo.devices, todo.to, actor=actor)
        version.deprecate(f"rolled back fleet-wide: {reason}"[:2000])
        AuditLog.record(
            actor=actor, action="model_version.rollback", target=version, reason=reason, **todo.answer(done=True)
        )
    return todo


def _require_reason(reason: str, what: str) -> None:
    if not reason.strip():
        raise ServiceError(
            "invalid", f"Say why the {what} is rolled back.", 400, fields={"reason": ["This field is required."]}
        )

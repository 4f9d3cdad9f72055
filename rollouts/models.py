"""Staged rollouts: templates, rollouts, their stages, per-device state and every gate's result.

A rollout's devices are chosen and split into stages when it is created
(``rollouts.services.create``), so no device outside a stage can ever be sent
the version. The scheduler (``rollouts.scheduler``) moves each rollout one step
per tick, under a row lock; states only move forward (``advance_state``).
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models
from django.utils import timezone

from core.errors import ServiceError
from fleet.models import Device, Site
from registry.models import ModelVersion
from rollouts import plan as plans


class RolloutTemplate(models.Model):
    """A named plan with gate defaults, so CI can start a rollout by name."""

    name = models.CharField(max_length=63, unique=True)
    description = models.TextField(blank=True)
    plan = models.JSONField()
    gate_defaults = models.JSONField(default=dict, blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        try:
            plans.parse_plan(self.plan)
            plans.parse_gates(self.gate_defaults, "gate_defaults")
        except ServiceError as exc:
            raise ValidationError(exc.fields or exc.detail) from None


class Rollout(models.Model):
    PENDING, RUNNING, PAUSED, HALTED, REVERTED, COMPLETED, ABORTED = (
        "pending",
        "running",
        "paused",
        "halted",
        "reverted",
        "completed",
        "aborted",
    )
    STATES = [(s, s) for s in (PENDING, RUNNING, PAUSED, HALTED, REVERTED, COMPLETED, ABORTED)]
    ACTIVE = (PENDING, RUNNING, PAUSED)
    FINAL = (REVERTED, COMPLETED, ABORTED)
    # The only moves a rollout makes; anything else is refused, so a late or repeated
    # tick or action cannot bring a finished rollout back to life.
    MOVES: dict[str, tuple[str, ...]] = {
        PENDING: (RUNNING, PAUSED, ABORTED),
        RUNNING: (PAUSED, HALTED, REVERTED, COMPLETED, ABORTED),
        PAUSED: (RUNNING, ABORTED),
        HALTED: (RUNNING, ABORTED),
        REVERTED: (),
        COMPLETED: (),
        ABORTED: (),
    }

    version = models.ForeignKey(ModelVersion, on_delete=models.PROTECT, related_name="rollouts")
    template = models.ForeignKey(RolloutTemplate, null=True, blank=True, on_delete=models.SET_NULL)
    target = models.JSONField()
    plan = models.JSONField()
    gate_overrides = models.JSONField(default=dict, blank=True)
    state = models.CharField(max_length=16, choices=STATES, default=PENDING, db_index=True)
    current_stage = models.PositiveSmallIntegerField(default=0)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    reason = models.TextField(blank=True)
    halt_reason = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at", "-pk"]

    def __str__(self) -> str:
        return f"rollout {self.pk} of {self.version}"

    def gates(self) -> dict[str, Any]:
        defaults = self.template.gate_defaults if self.template else {}
        return plans.effective_gates(defaults, self.gate_overrides)

    def advance_state(self, new: str, *, at: Any = None) -> None:
        """Move to ``new`` if that is a forward move from the current state; refuse otherwise (409)."""
        if new not in self.MOVES[self.state]:
            raise ServiceError("invalid_state", f"A {self.state} rollout cannot become {new}.", 409)
        self.state = new
        if new == self.RUNNING and self.started_at is None:
            self.started_at = at or timezone.now()
        if new in self.FINAL:
            self.finished_at = at or timezone.now()


class RolloutStage(models.Model):
    PENDING, WAITING_APPROVAL, SHADOWING, INSTALLING, SOAKING, PASSED, FAILED, ABORTED = (
        "pending",
        "waiting_approval",
        "shadowing",
        "installing",
        "soaking",
        "passed",
        "failed",
        "aborted",
    )
    STATES = [(s, s) for s in (PENDING, WAITING_APPROVAL, SHADOWING, INSTALLING, SOAKING, PASSED, FAILED, ABORTED)]
    KINDS = [(k, k) for k in plans.STAGE_KINDS]
    VERDICTS = [("pass", "pass"), ("marginal", "marginal"), ("fail", "fail")]

    rollout = models.ForeignKey(Rollout, on_delete=models.CASCADE, related_name="stages")
    index = models.PositiveSmallIntegerField()
    kind = models.CharField(max_length=8, choices=KINDS)
    value = models.PositiveIntegerField()
    requires_approval = models.BooleanField(default=False)
    # A shadow stage runs the candidate beside the model on its devices first, and installs it only
    # once its agreement passed (shadow_passed_at).
    shadow = models.BooleanField(default=False)
    shadow_started_at = models.DateTimeField(null=True, blank=True)
    shadow_until = models.DateTimeField(null=True, blank=True)
    shadow_passed_at = models.DateTimeField(null=True, blank=True)
    approved_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    approved_at = models.DateTimeField(null=True, blank=True)
    state = models.CharField(max_length=16, choices=STATES, default=PENDING)
    started_at = models.DateTimeField(null=True, blank=True)
    all_active_at = models.DateTimeField(null=True, blank=True)
    soak_until = models.DateTimeField(null=True, blank=True)
    soak_extensions = models.PositiveSmallIntegerField(default=0)
    finished_at = models.DateTimeField(null=True, blank=True)
    verdict = models.CharField(max_length=8, choices=VERDICTS, blank=True)

    class Meta:
        ordering = ["rollout", "index"]
        constraints = [models.UniqueConstraint(fields=["rollout", "index"], name="rollout_stage_unique_index")]

    def __str__(self) -> str:
        return f"{self.rollout} stage {self.index}"


class RolloutDevice(models.Model):
    PENDING, ASSIGNED, ACTIVE, FAILED, REVERTED, SILENT = (
        "pending",
        "assigned",
        "active",
        "failed",
        "reverted",
        "silent",
    )
    STATES = [(s, s) for s in (PENDING, ASSIGNED, ACTIVE, FAILED, REVERTED, SILENT)]

    rollout = models.ForeignKey(Rollout, on_delete=models.CASCADE, related_name="devices")
    device = models.ForeignKey(Device, on_delete=models.CASCADE, related_name="rollout_entries")
    stage_index = models.PositiveSmallIntegerField()
    # What the device ran (or was sent) before, with its target: where a revert sends it back.
    from_version = models.ForeignKey(ModelVersion, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    from_target = models.CharField(max_length=32, blank=True)
    target = models.CharField(max_length=32)
    state = models.CharField(max_length=16, choices=STATES, default=PENDING)
    generation = models.PositiveBigIntegerField(null=True, blank=True)
    # When it was sent the version: its activation timeout counts from here, as a closed maintenance
    # window or a download cap may hold a device well after its stage started.
    sent_at = models.DateTimeField(null=True, blank=True)
    error = models.TextField(blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["rollout", "stage_index", "pk"]
        constraints = [models.UniqueConstraint(fields=["rollout", "device"], name="rollout_device_unique")]
        indexes = [models.Index(fields=["rollout", "stage_index"])]

    def __str__(self) -> str:
        return f"{self.rollout} / {self.device_id}"


class GateResult(models.Model):
    VERDICTS = [("pass", "pass"), ("marginal", "marginal"), ("fail", "fail"), ("pending", "pending")]

    stage = models.ForeignKey(RolloutStage, on_delete=models.CASCADE, related_name="gate_results")
    gate = models.CharField(max_length=32)
    value = models.FloatField(null=True, blank=True)
    threshold = models.FloatField(null=True, blank=True)
    verdict = models.CharField(max_length=8, choices=VERDICTS)
    details = models.JSONField(default=dict, blank=True)
    evaluated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["stage", "evaluated_at", "pk"]

    def __str__(self) -> str:
        return f"{self.stage}: {self.gate} {self.verdict}"


class SiteRollback(models.Model):
    """A site sent back to its last known-good version of a model: who, why, from what, to what.

    A version a site was rolled back from is never its known-good version again.
    """

    site = models.ForeignKey(Site, on_delete=models.CASCADE, related_name="rollbacks")
    model_name = models.CharField(max_length=63)
    from_versions = models.JSONField(default=list)
    to_version = models.ForeignKey(ModelVersion, on_delete=models.PROTECT, related_name="+")
    devices = models.PositiveIntegerField()
    stopped_rollouts = models.JSONField(default=list)
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    actor_label = models.CharField(max_length=200)
    reason = models.TextField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-pk"]

    def __str__(self) -> str:
        return f"{self.site} back to {self.to_version}"

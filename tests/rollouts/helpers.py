"""Driving a rollout through the scheduler as time passes, its devices answering as told."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from django.utils import timezone

from fleet.models import Device
from registry.models import ModelVersion
from rollouts import scheduler, services
from rollouts.models import Rollout, RolloutDevice
from tests.rollouts.conftest import alive, report, sent_to, window

PLAN = {"stages": [{"kind": "count", "value": 1}, {"kind": "percent", "value": 10}, {"kind": "percent", "value": 100}]}
GATES = {"soak_s": 60, "activation_timeout_s": 600}


def start_rollout(version: ModelVersion, **extra: Any) -> Rollout:
    return services.create(
        version=version,
        target={"running_model": "parts"},
        plan=extra.pop("plan", PLAN),
        gates={**GATES, **extra.pop("gates", {})},
        actor="ci",
        reason="release 2.0.0",
    )


def drive(
    rollout: Rollout,
    v1: ModelVersion,
    v2: ModelVersion,
    *,
    phase: str = "active",
    latency_ms: float = 20.0,
    confidence: tuple[float, float] = (6, 2),
    answers: tuple[str, str] = ("ok", "scratch"),
    ticker: Callable[[datetime], None] | None = None,
    ticks: int = 30,
) -> datetime:
    """Tick every two minutes; each device sent the version answers with ``phase`` and sends telemetry."""
    now = timezone.now().replace(second=0, microsecond=0)
    ticker = ticker or (lambda at: scheduler.tick(now=at))
    for _ in range(ticks):
        alive(Device.objects.all(), now)
        ticker(now)
        rollout.refresh_from_db()
        if rollout.state not in Rollout.ACTIVE:
            break
        for entry in sent_to(rollout.pk, RolloutDevice.ASSIGNED):
            if phase == "active":
                report(entry.device, v2)
            else:
                report(entry.device, v1, phase, error="reference outputs differ")
            # Their own baseline on 1.0.0 half an hour ago, then the new version from the next soak on.
            window(entry.device, now - timedelta(minutes=30), v1, seed=1)
            for m in range(3, 9):
                at = now + timedelta(minutes=m)
                window(entry.device, at, v2, latency_ms=latency_ms, confidence=confidence, answers=answers, seed=m)
        now += timedelta(minutes=2)
    return now

"""How a set of devices compares with its own baseline since a moment: what the rollout gates read.

``compare_to_baseline(device_ids, since)`` merges the devices' windows from
``since`` to now and from an equally long stretch before ``since`` (at most a
day, at least an hour), and returns one figure per gate metric with both
values and the change. Percentiles come from the merged histograms.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.conf import settings
from django.utils import timezone

from fleet.models import Device
from telemetry.metrics import Summary
from telemetry.models import Resolution, Scope, WindowRollup

FAILED_PHASES = ("failed", "rolled_back")


@dataclass(frozen=True)
class Figure:
    baseline: float | None
    current: float | None

    @property
    def change(self) -> float | None:
        """current - baseline (absolute; rates and confidences are already fractions)."""
        if self.baseline is None or self.current is None:
            return None
        return self.current - self.baseline

    @property
    def ratio(self) -> float | None:
        """current / baseline - 1: the relative regression (e.g. +0.2 is 20 % slower)."""
        if not self.baseline or self.current is None:
            return None
        return self.current / self.baseline - 1.0


@dataclass(frozen=True)
class BaselineComparison:
    since: datetime
    baseline_start: datetime
    devices: int
    frames_baseline: int
    frames_current: int
    # latency_p95_ms, mean_confidence, escalation_rate, error_rate, dropped_rate
    figures: dict[str, Figure]
    failed_installs: list[str] = field(default_factory=list)
    silent_devices: list[str] = field(default_factory=list)
    unknown_devices: list[str] = field(default_factory=list)

    @property
    def p95_latency_regression(self) -> float | None:
        return self.figures["latency_p95_ms"].ratio

    @property
    def mean_confidence_drop(self) -> float | None:
        change = self.figures["mean_confidence"].change
        return None if change is None else -change

    @property
    def escalation_rate_rise(self) -> float | None:
        return self.figures["escalation_rate"].change

    @property
    def error_rate_rise(self) -> float | None:
        return self.figures["error_rate"].change


def compare_to_baseline(
    device_ids: Sequence[str], since: datetime, *, now: datetime | None = None
) -> BaselineComparison:
    now = now or timezone.now()
    span = min(max(now - since, timedelta(hours=1)), timedelta(days=1))
    baseline_start = since - span
    devices = list(Device.objects.filter(device_id__in=device_ids))
    keys = [d.device_id for d in devices]
    # Minute rows give exact edges for short spans; hour rows keep long ones cheap.
    resolution = Resolution.MINUTE if span <= timedelta(hours=6) else Resolution.HOUR
    before, after = Summary(), Summary()
    rows = WindowRollup.objects.filter(
        resolution=resolution, scope=Scope.DEVICE, key__in=keys, bucket__gte=baseline_start, bucket__lte=now
    )
    for row in rows:
        (after if row.bucket >= since else before).add_totals(row)
    silent_after = now - timedelta(seconds=settings.DEVICE_OFFLINE_AFTER_S)
    metrics = ("latency_p95_ms", "mean_confidence", "escalation_rate", "error_rate", "dropped_rate")
    old, new = before.figures(), after.figures()
    return BaselineComparison(
        since=since,
        baseline_start=baseline_start,
        devices=len(devices),
        frames_baseline=before.frames,
        frames_current=after.frames,
        figures={m: Figure(_num(old[m]), _num(new[m])) for m in metrics},
        failed_installs=sorted(
            d.device_id for d in devices if isinstance(d.reported, dict) and d.reported.get("phase") in FAILED_PHASES
        ),
        silent_devices=sorted(
            d.device_id for d in devices if not d.online or d.last_seen is None or d.last_seen < silent_after
        ),
        unknown_devices=sorted(set(device_ids) - set(keys)),
    )


def _num(value: float | int | None) -> float | None:
    return None if value is None else float(value)

"""Time series for charts, downsampled on the server from the rollups.

A request names a scope (device, site, or model version across the fleet), a
time range and at most ``points`` points. The resolution read is minute rows
for ranges up to ``MINUTE_RANGE`` and hour rows beyond, and the rows are
merged into equal steps (a whole number of rollup buckets) so a week at one
site is 168 hour rows read in one query, whatever the number of devices.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from core.errors import ServiceError
from telemetry.metrics import Summary
from telemetry.models import HeartbeatRollup, Resolution, Scope, WindowRollup

MINUTE_RANGE = timedelta(hours=6)
MAX_MINUTE_RANGE = timedelta(days=2)
MAX_POINTS = 1000
_SECONDS = {Resolution.MINUTE: 60, Resolution.HOUR: 3600}


class SeriesError(ServiceError):
    """A request the server refuses: an ``invalid`` error naming the query parameter at fault."""

    def __init__(self, field: str, detail: str) -> None:
        super().__init__("invalid", detail, 400, fields={field: [detail]})


@dataclass(frozen=True)
class SeriesRequest:
    scope: str  # "device", "site" or "model"
    key: str  # device_id, site slug, or "name@version"
    start: datetime
    end: datetime
    points: int = 300
    resolution: str = "auto"
    model: str | None = None  # "name@version" filter for device and site scopes
    device_pk: int | None = None


def _split_model(value: str, field: str) -> tuple[str, str]:
    name, sep, version = value.rpartition("@")
    if not sep or not version:
        raise SeriesError(field, f"{field} must be written name@version.")
    return name, version


def build(request: SeriesRequest) -> dict[str, Any]:
    if request.end <= request.start:
        raise SeriesError("end", "end must be after start.")
    if not 1 <= request.points <= MAX_POINTS:
        raise SeriesError("points", f"points must be between 1 and {MAX_POINTS}.")
    span = request.end - request.start
    if request.resolution == "auto":
        resolution = Resolution.MINUTE if span <= MINUTE_RANGE else Resolution.HOUR
    elif request.resolution in Resolution.values:
        resolution = Resolution(request.resolution)
    else:
        raise SeriesError("resolution", "resolution must be auto, 1m or 1h.")
    if resolution == Resolution.MINUTE and span > MAX_MINUTE_RANGE:
        raise SeriesError("resolution", f"minute resolution covers at most {MAX_MINUTE_RANGE.days} days; use 1h.")
    bucket_s = _SECONDS[resolution]
    step_s = bucket_s * max(1, math.ceil(span.total_seconds() / request.points / bucket_s))
    rows = WindowRollup.objects.filter(
        resolution=resolution, bucket__gte=_floor(request.start, bucket_s), bucket__lt=request.end
    )
    if request.scope == "model":
        name, version = _split_model(request.key, "key")
        rows = rows.filter(scope=Scope.FLEET, key="*", model_name=name, model_version=version)
    else:
        rows = rows.filter(scope=Scope.DEVICE if request.scope == "device" else Scope.SITE, key=request.key)
        if request.model:
            name, version = _split_model(request.model, "model")
            rows = rows.filter(model_name=name, model_version=version)
    origin = _floor(request.start, bucket_s)
    steps: dict[datetime, Summary] = defaultdict(Summary)
    total = Summary()
    versions: set[str] = set()
    for row in rows.order_by("bucket"):
        steps[_step(row.bucket, origin, step_s)].add_totals(row)
        total.add_totals(row)
        versions.add(f"{row.model_name}@{row.model_version}")
    result: dict[str, Any] = {
        "scope": request.scope,
        "key": request.key,
        "start": request.start,
        "end": request.end,
        "resolution": resolution,
        "step_s": step_s,
        "model_versions": sorted(versions),
        # Each step's confidence distribution too, so a chart can show how it moves over time.
        "points": [
            {"t": t, **s.figures(), "confidence_distribution": s.confidence_distribution()}
            for t, s in sorted(steps.items())
        ],
        "summary": {
            **total.figures(),
            "confidence_distribution": total.confidence_distribution(),
            "class_mix": total.class_mix(),
        },
    }
    if request.scope == "device" and request.device_pk is not None:
        result["health"] = _health(request.device_pk, request, resolution, origin, step_s)
    return result


def _health(
    device_pk: int, request: SeriesRequest, resolution: str, origin: datetime, step_s: int
) -> list[dict[str, Any]]:
    rows = HeartbeatRollup.objects.filter(
        resolution=resolution, device_id=device_pk, bucket__gte=origin, bucket__lt=request.end
    ).order_by("bucket")
    merged: dict[datetime, list[HeartbeatRollup]] = defaultdict(list)
    for row in rows:
        merged[_step(row.bucket, origin, step_s)].append(row)
    points = []
    for t, group in sorted(merged.items()):
        beats = sum(r.heartbeats for r in group)
        temps = [r.temperature_c_max for r in group if r.temperature_c_max is not None]
        freqs = [r.cpu_freq_mhz_min for r in group if r.cpu_freq_mhz_min is not None]
        points.append(
            {
                "t": t,
                "heartbeats": beats,
                "cpu_percent_avg": sum(r.cpu_percent_sum for r in group) / beats if beats else None,
                "cpu_percent_max": max(r.cpu_percent_max for r in group),
                "temperature_c_max": max(temps) if temps else None,
                "cpu_freq_mhz_min": min(freqs) if freqs else None,
                "disk_percent_max": max(r.disk_percent_max for r in group),
                "outbox_depth_max": max(r.outbox_depth_max for r in group),
            }
        )
    return points


def _floor(moment: datetime, seconds: int) -> datetime:
    return moment - timedelta(seconds=int(moment.timestamp()) % seconds, microseconds=moment.microsecond)


def _step(bucket: datetime, origin: datetime, step_s: int) -> datetime:
    offset = int((bucket - origin).total_seconds()) // step_s * step_s
    return origin + timedelta(seconds=offset)

"""The fleet overview's charts: what the whole fleet did over the last day, from two aggregated queries.

The hourly fleet rollups (one row per model version and hour, whatever the
number of devices) give frames per second, p95 latency and the escalation rate
of each hour; one grouped query over devices gives how many run each model
version. Nothing here grows with the fleet: 24 hours x versions rows, and one
row per version.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timedelta
from typing import Any

from django.db.models import Count
from django.db.models.fields.json import KT

from fleet.models import Device
from telemetry.metrics import Summary
from telemetry.models import Resolution, Scope, WindowRollup
from telemetry.rollup_rows import floor_to

HOURS = 24


def fleet_charts(now: datetime) -> dict[str, Any]:
    """The series the overview draws, ready for ``json_script``; empty lists where there is no data."""
    end = floor_to(now, timedelta(hours=1)) + timedelta(hours=1)
    start = end - timedelta(hours=HOURS)
    hours: dict[datetime, Summary] = defaultdict(Summary)
    rows = WindowRollup.objects.filter(
        resolution=Resolution.HOUR, scope=Scope.FLEET, key="*", bucket__gte=start, bucket__lt=end
    )
    for row in rows.order_by("bucket"):
        hours[row.bucket].add_totals(row)
    activity = []
    for bucket in sorted(hours):
        figures = hours[bucket].figures()
        # The hour in progress has run only since its start: divide by what has passed of it.
        seconds = max(1.0, min(3600.0, (now - bucket).total_seconds()))
        activity.append(
            {
                "t": bucket.isoformat(),
                "frames_per_s": round(int(figures["frames"] or 0) / seconds, 2),
                "latency_p95_ms": figures["latency_p95_ms"],
                "escalation_rate": figures["escalation_rate"],
            }
        )
    versions = (
        Device.objects.filter(revoked_at__isnull=True, reported__has_key="model_version")
        .values(model=KT("reported__model_name"), ver=KT("reported__model_version"))
        .annotate(devices=Count("pk"))
        .order_by("-devices", "model", "ver")
    )
    return {
        "activity": activity,
        "versions": [{"label": f"{v['model'] or '?'} {v['ver']}", "devices": v["devices"]} for v in versions],
    }

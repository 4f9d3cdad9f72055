"""Putting a device into a known state for health, drift and peer checks."""

from __future__ import annotations

import random
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from agent.kernel import protocol
from fleet.models import Device
from telemetry.metrics import Summary
from telemetry.models import Resolution, Scope, WindowRollup
from tests.payloads import heartbeat_data, window_data


def alive(device: Device, now: datetime, **heartbeat: Any) -> Device:
    """Online, just seen, with this newest heartbeat."""
    device.online = True
    device.last_seen = now
    device.last_heartbeat = {**heartbeat_data(**heartbeat), "ts": now.isoformat()}
    device.save(update_fields=["online", "last_seen", "last_heartbeat"])
    return device


def recent_windows(
    device: Device,
    now: datetime,
    *,
    frames: int = 2000,
    latency_ms: float = 20.0,
    confidence: tuple[float, float] = (6, 2),
    classes: Sequence[str] = ("ok", "defect"),
    weights: Sequence[float] = (0.9, 0.1),
    escalation_rate: float = 0.05,
    model: str = "detector@1.0.0",
    seed: int = 0,
    minutes_ago: int = 5,
    fallback: bool = False,
) -> WindowRollup:
    """Replace the device's recent minute rollup with one of these figures (the drift/peer window)."""
    rng = random.Random(seed)
    start = (now - timedelta(minutes=minutes_ago)).replace(second=0, microsecond=0)
    data = window_data(
        start,
        [rng.lognormvariate(0, 0.1) * latency_ms for _ in range(frames)],
        [rng.betavariate(*confidence) for _ in range(frames)],
        rng.choices(list(classes), weights=list(weights), k=frames),
        model=model,
        escalations=int(frames * escalation_rate),
        fallback=fallback,
    )
    summary = Summary()
    summary.add_window(protocol.window_of(protocol.TelemetryRecord(seq=1, kind="window", ts=start, data=data)))
    name, version = model.split("@")
    WindowRollup.objects.filter(resolution=Resolution.MINUTE, scope=Scope.DEVICE, key=device.device_id).delete()
    return WindowRollup.objects.create(
        resolution=Resolution.MINUTE,
        scope=Scope.DEVICE,
        key=device.device_id,
        model_name=name,
        model_version=version,
        bucket=start,
        devices=1,
        **summary.totals(),
    )

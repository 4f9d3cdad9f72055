"""The data of telemetry records as an agent sends them: window summaries and heartbeats (no Django)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from agent.kernel import histogram


def window_data(
    start: datetime,
    latencies_ms: Iterable[float] = (),
    confidences: Iterable[float] = (),
    classes: Iterable[str] = (),
    *,
    seconds: int = 10,
    model: str = "detector@1.0.0",
    **extra: Any,
) -> dict[str, Any]:
    name, version = model.split("@")
    latencies, confs = list(latencies_ms), list(confidences)
    data: dict[str, Any] = {
        "start": start.isoformat(),
        "end": (start + timedelta(seconds=seconds)).isoformat(),
        "model_name": name,
        "model_version": version,
        "frames": max(len(latencies), len(confs)),
        "latency_ms": histogram.LatencyHistogram.of(latencies).to_wire(),
        "confidence": histogram.confidence_histogram(confs),
        "classes": dict(Counter(classes)),
    }
    data.update(extra)
    return data


def heartbeat_data(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "agent_version": "0.1.0",
        "uptime_s": 600.0,
        "cpu_percent": 35.0,
        "memory_percent": 40.0,
        "disk_percent": 30.0,
        "disk_free_bytes": 8 * 10**9,
        "temperature_c": 55.0,
        "cpu_freq_mhz": 1500.0,
        "model_version": "1.0.0",
        "outbox_depth": 0,
    }
    data.update(overrides)
    return data

"""Telemetry records and batches as an agent sends them, and a feed that stores them through ingest."""

from __future__ import annotations

import random
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from django.utils import timezone

from agent.kernel import protocol
from fleet.models import Device
from telemetry import ingest, rollups
from tests.payloads import heartbeat_data, window_data


def record(seq: int, kind: str, ts: datetime, data: dict[str, Any]) -> protocol.TelemetryRecord:
    return protocol.TelemetryRecord(seq=seq, kind=kind, ts=ts, data=data)  # type: ignore[arg-type]


def batch(*records: protocol.TelemetryRecord, floor: int | None = None) -> protocol.Telemetry:
    return protocol.Telemetry(records=list(records), floor=floor)


def store(device: Device, message: protocol.Telemetry) -> int:
    """Store one message through the one ingest path, a batch of one; returns the device's ack."""
    return ingest.store_batches([ingest.Received(device, message)]).acks[device.pk]


class Feed:
    """Writes one device's telemetry through the ingest path, numbering records as its outbox would."""

    def __init__(self, device: Device) -> None:
        self.device = device
        self.seq = 0

    def windows(
        self,
        start: datetime,
        minutes: int,
        rng: random.Random,
        *,
        per_minute: int = 6,
        latency: tuple[float, float] = (20.0, 0.2),
        confidence: tuple[float, float] = (6.0, 2.0),
        classes: Sequence[str] = ("ok", "defect"),
        weights: Sequence[float] = (0.9, 0.1),
        frames: int = 50,
        model: str = "detector@1.0.0",
        **extra: Any,
    ) -> list[protocol.TelemetryRecord]:
        """Windows over ``minutes``: log-normal latencies (median, sigma), beta confidences (a, b)."""
        out = []
        for i in range(minutes * per_minute):
            at = start + timedelta(seconds=i * 60 / per_minute)
            self.seq += 1
            data = window_data(
                at,
                [rng.lognormvariate(_ln(latency[0]), latency[1]) for _ in range(frames)],
                [rng.betavariate(*confidence) for _ in range(frames)],
                rng.choices(list(classes), weights=list(weights), k=frames),
                seconds=60 // per_minute,
                model=model,
                **extra,
            )
            out.append(record(self.seq, "window", at + timedelta(seconds=60 // per_minute), data))
        return out

    def heartbeat(self, at: datetime, **overrides: Any) -> protocol.TelemetryRecord:
        self.seq += 1
        return record(self.seq, "heartbeat", at, heartbeat_data(**overrides))

    def store(self, records: list[protocol.TelemetryRecord], chunk: int = 100) -> int:
        ack = 0
        for i in range(0, len(records), chunk):
            ack = store(self.device, batch(*records[i : i + chunk]))
        return ack


def _ln(x: float) -> float:
    import math

    return math.log(x)


def roll_up_everything() -> None:
    """Run the rollup task as the beat would, past the settling delay."""
    rollups.roll_up(now=timezone.now() + rollups.SETTLE + timedelta(seconds=1))

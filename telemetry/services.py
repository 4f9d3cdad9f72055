"""The telemetry workflows other apps call: storing what devices send, and comparing with baselines."""

from __future__ import annotations

from agent.kernel import protocol
from fleet.models import Device
from telemetry.baseline import BaselineComparison, Figure, compare_to_baseline
from telemetry.ingest import Received, Stored, store_batches
from telemetry.models import DeviceEvent

__all__ = [
    "BaselineComparison",
    "Figure",
    "Received",
    "Stored",
    "compare_to_baseline",
    "record_event",
    "store_batches",
]


def record_event(device: Device, event: protocol.Event) -> DeviceEvent:
    return DeviceEvent.objects.create(device=device, kind=event.kind, at=event.ts, data=event.data)

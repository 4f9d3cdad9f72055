"""The telemetry workflows other apps call: storing what devices send, and comparing with baselines."""

from __future__ import annotations

import hashlib

import orjson

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


def record_event(device: Device, event: protocol.Event, *, sent: protocol.Event | None = None) -> DeviceEvent:
    """Store an event once: a redelivered copy (MQTT delivers at least once) finds the first one.

    ``sent`` is the event as the device sent it when ``event`` was restamped (a clock ahead of
    the server's): copies are recognised by what the device sent, not by when they arrived.
    """
    original = sent or event
    digest = hashlib.sha256(
        orjson.dumps([original.kind, original.ts.isoformat(), original.data], option=orjson.OPT_SORT_KEYS)
    ).hexdigest()
    row, _ = DeviceEvent.objects.get_or_create(
        device=device, digest=digest, defaults={"kind": event.kind, "at": event.ts, "data": event.data}
    )
    return row

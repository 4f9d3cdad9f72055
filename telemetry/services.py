"""Storing what devices send: telemetry batches and events."""

from __future__ import annotations

import logging
from datetime import datetime, timezone

from django.db import transaction

from agent import protocol
from fleet.models import Device
from telemetry.models import DeviceEvent, TelemetryRecord

# How far past the acknowledged watermark one ack computation looks; a device
# sends at most MAX_BATCH_RECORDS per message, so this covers several batches.
_ACK_WINDOW = 10 * protocol.MAX_BATCH_RECORDS

log = logging.getLogger(__name__)


def store_telemetry(device: Device, batch: protocol.Telemetry) -> int:
    """Store a batch once per (device, seq) and return the seq to acknowledge.

    Redelivered and reordered batches are harmless: duplicates are ignored by
    the unique constraint, and the acknowledgement is the highest seq below
    which everything is stored (or was declared dropped by the device), so a
    record still in flight through another bridge is never acknowledged early.
    """
    rows = [
        TelemetryRecord(device=device, seq=r.seq, kind=r.kind, recorded_at=r.ts, data=r.data) for r in batch.records
    ]
    latest = _latest_heartbeat(batch)
    with transaction.atomic():
        TelemetryRecord.objects.bulk_create(rows, ignore_conflicts=True)
        locked = Device.objects.select_for_update().get(pk=device.pk)
        watermark = locked.telemetry_acked_seq
        if batch.floor is not None:
            watermark = max(watermark, batch.floor - 1)
        stored = TelemetryRecord.objects.filter(device=device, seq__gt=watermark).order_by("seq")
        for seq in stored.values_list("seq", flat=True)[:_ACK_WINDOW]:
            if seq != watermark + 1:
                break
            watermark = seq
        fields = ["telemetry_acked_seq"]
        locked.telemetry_acked_seq = watermark
        if latest is not None and latest[0] >= _heartbeat_time(locked):
            ts, heartbeat = latest
            locked.last_heartbeat = {**heartbeat.model_dump(mode="json"), "ts": ts.isoformat()}
            locked.agent_version = heartbeat.agent_version
            fields += ["last_heartbeat", "agent_version"]
        locked.save(update_fields=fields)
    device.telemetry_acked_seq = watermark
    return watermark


def _latest_heartbeat(batch: protocol.Telemetry) -> tuple[datetime, protocol.Heartbeat] | None:
    """The newest heartbeat of the batch whose data is valid.

    A malformed heartbeat is still stored as a record (refusing it would block
    the device's outbox behind it forever) but never shown as the device's state.
    """
    for record in sorted(batch.records, key=lambda r: r.seq, reverse=True):
        if record.kind != "heartbeat":
            continue
        try:
            return record.ts, protocol.heartbeat_of(record)
        except protocol.ProtocolError as exc:
            log.warning("seq=%d heartbeat data rejected: %s", record.seq, exc)
    return None


def _heartbeat_time(device: Device) -> datetime:
    ts = device.last_heartbeat.get("ts") if isinstance(device.last_heartbeat, dict) else None
    return datetime.fromisoformat(ts) if ts else datetime.min.replace(tzinfo=timezone.utc)


def record_event(device: Device, event: protocol.Event) -> DeviceEvent:
    return DeviceEvent.objects.create(device=device, kind=event.kind, at=event.ts, data=event.data)

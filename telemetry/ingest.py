"""Storing telemetry batches: many messages, one multi-row insert, one ack per device.

The bridge drains whatever is queued and hands it here in one call. Records
are inserted with one multi-row ``INSERT ... ON CONFLICT (device, seq) DO
NOTHING`` per chunk, so a redelivered or reordered batch changes nothing, and
two bridges writing the same record store it once. Only then is the ack
computed per device: the highest seq below which everything is stored.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone

from django.db import transaction

from agent import protocol
from fleet.models import Device
from telemetry.models import TelemetryRecord

# How far past the acknowledged watermark one ack computation looks; a device
# sends at most MAX_BATCH_RECORDS per message, so this covers several batches.
_ACK_WINDOW = 10 * protocol.MAX_BATCH_RECORDS
# Rows per INSERT statement: large enough to amortise the round trip, small
# enough to stay well under PostgreSQL's 65,535 bind parameters (6 per row).
INSERT_CHUNK = 2000

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Stored:
    """What one call stored: the ack per device and how many records were offered to the insert."""

    acks: dict[int, int]
    offered: int


def store_batches(batches: Sequence[tuple[Device, protocol.Telemetry]]) -> Stored:
    """Store several devices' batches in one transaction and return the ack per device pk."""
    by_device: dict[int, list[protocol.Telemetry]] = defaultdict(list)
    devices: dict[int, Device] = {}
    for device, batch in batches:
        by_device[device.pk].append(batch)
        devices[device.pk] = device
    rows: list[TelemetryRecord] = []
    for pk, device_batches in by_device.items():
        # Records at or below the ack were stored before (and may since have
        # aged out of raw retention): skipping them keeps a late redelivery from
        # bringing them back.
        acked = devices[pk].telemetry_acked_seq
        seen: set[int] = set()
        for batch in device_batches:
            for r in batch.records:
                if r.seq > acked and r.seq not in seen:
                    seen.add(r.seq)
                    rows.append(TelemetryRecord(device_id=pk, seq=r.seq, kind=r.kind, recorded_at=r.ts, data=r.data))
    # Sorted rows take row locks in one order, so two bridges cannot deadlock.
    rows.sort(key=lambda row: (row.device_id, row.seq))
    acks: dict[int, int] = {}
    with transaction.atomic():
        for start in range(0, len(rows), INSERT_CHUNK):
            TelemetryRecord.objects.bulk_create(rows[start : start + INSERT_CHUNK], ignore_conflicts=True)
        for pk in sorted(by_device):
            acks[pk] = _advance(devices[pk], by_device[pk])
    return Stored(acks=acks, offered=len(rows))


def store_telemetry(device: Device, batch: protocol.Telemetry) -> int:
    """Store one batch once per (device, seq) and return the seq to acknowledge."""
    return store_batches([(device, batch)]).acks[device.pk]


def _advance(device: Device, batches: list[protocol.Telemetry]) -> int:
    """Move the device's contiguous watermark forward and keep its newest heartbeat."""
    locked = Device.objects.select_for_update().get(pk=device.pk)
    watermark = locked.telemetry_acked_seq
    floors = [b.floor for b in batches if b.floor is not None]
    if floors:
        watermark = max(watermark, max(floors) - 1)
    stored = TelemetryRecord.objects.filter(device_id=device.pk, seq__gt=watermark).order_by("seq")
    for seq in stored.values_list("seq", flat=True)[:_ACK_WINDOW]:
        if seq != watermark + 1:
            break
        watermark = seq
    fields = ["telemetry_acked_seq"]
    locked.telemetry_acked_seq = watermark
    latest = _latest_heartbeat([r for b in batches for r in b.records])
    if latest is not None and latest[0] >= _heartbeat_time(locked):
        ts, heartbeat = latest
        locked.last_heartbeat = {**heartbeat.model_dump(mode="json"), "ts": ts.isoformat()}
        locked.agent_version = heartbeat.agent_version
        fields += ["last_heartbeat", "agent_version"]
    locked.save(update_fields=fields)
    device.telemetry_acked_seq = watermark
    return watermark


def _latest_heartbeat(records: list[protocol.TelemetryRecord]) -> tuple[datetime, protocol.Heartbeat] | None:
    """The newest heartbeat whose data is valid.

    A malformed heartbeat is still stored as a record (refusing it would block
    the device's outbox behind it forever) but never shown as the device's state.
    """
    for record in sorted(records, key=lambda r: r.seq, reverse=True):
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

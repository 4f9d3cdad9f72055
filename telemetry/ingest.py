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
from typing import Any, NamedTuple

import orjson
import psycopg
from django.db import connection, transaction
from django.db.models import Q
from django.utils import timezone as dj_timezone

from agent.kernel import protocol
from fleet.models import Device
from telemetry.models import TelemetryRecord

# How far past the acknowledged watermark one ack computation looks; a device
# sends at most MAX_BATCH_RECORDS per message, so this covers several batches.
_ACK_WINDOW = 10 * protocol.MAX_BATCH_RECORDS

log = logging.getLogger(__name__)


class Received(NamedTuple):
    """One telemetry message to store and the device it came from."""

    device: Device
    message: protocol.Telemetry


@dataclass(frozen=True)
class Stored:
    """What one call stored: the ack per device pk."""

    acks: dict[int, int]


def store_batches(batches: Sequence[Received], seen_at: datetime | None = None) -> Stored:
    """Store several devices' batches in one transaction and return the ack per device pk.

    ``seen_at`` (when the bridge received them) moves each device's last_seen
    forward in the same statement as its ack.
    """
    by_device: dict[int, list[Received]] = defaultdict(list)
    for item in batches:
        by_device[item.device.pk].append(item)
    rows = _rows(by_device)
    with transaction.atomic():
        _insert(rows)
        acks = _advance(by_device, seen_at)
    return Stored(acks=acks)


# Rows are copied (COPY, binary) into a session's staging table, then moved
# with one INSERT ... SELECT in (device, seq) order: sorted rows take index
# locks in one order, so two bridges cannot deadlock, and ON CONFLICT makes a
# redelivered record a no-op. The staging table is emptied before each use
# (and at commit), so nothing carries over from a batch that failed.
_STAGE = (
    "CREATE TEMP TABLE IF NOT EXISTS telemetry_incoming "
    "(device_id bigint, seq bigint, kind text, recorded_at timestamptz, data text) ON COMMIT DELETE ROWS"
)
_COPY = "COPY telemetry_incoming (device_id, seq, kind, recorded_at, data) FROM STDIN (FORMAT BINARY)"
_COPY_TYPES = ["int8", "int8", "text", "timestamptz", "text"]
_MOVE = (
    "INSERT INTO telemetry_telemetryrecord (device_id, seq, kind, recorded_at, received_at, data) "
    "SELECT device_id, seq, kind, recorded_at, %s, data::json FROM telemetry_incoming "
    "ORDER BY device_id, seq ON CONFLICT (device_id, seq) DO NOTHING"
)

# (device pk, seq, kind, recorded_at, data): plain tuples, as model instances
# cost more to build than the insert of their row.
_Row = tuple[int, int, str, datetime, dict[str, Any]]


def _rows(by_device: dict[int, list[Received]]) -> list[_Row]:
    """The rows to insert, once per (device, seq).

    Records at or below the device's ack were stored before (and may since
    have aged out of raw retention): skipping them keeps a late redelivery
    from bringing them back.
    """
    rows: list[_Row] = []
    for pk, items in by_device.items():
        acked = items[0].device.telemetry_acked_seq
        seen: set[int] = set()
        for item in items:
            for r in item.message.records:
                if r.seq > acked and r.seq not in seen:
                    seen.add(r.seq)
                    rows.append((pk, r.seq, r.kind, r.ts, r.data))
    return rows


def _insert(rows: list[_Row]) -> None:
    """Insert the rows once per (device, seq).

    On PostgreSQL: a binary COPY into a staging table, then one INSERT ...
    SELECT ... ON CONFLICT DO NOTHING; three statements whatever the row
    count, and no per-row parameters to format (Django's bulk_create quotes
    six per row into the SQL text). Data goes as JSON text into a ``json``
    column (``VerbatimJSONField``), which PostgreSQL checks but does not
    decompose. Other databases (SQLite for the demo) use bulk_create with
    ignore_conflicts.
    """
    if not rows:
        return
    if connection.vendor != "postgresql":
        TelemetryRecord.objects.bulk_create(
            [
                TelemetryRecord(device_id=pk, seq=seq, kind=kind, recorded_at=ts, data=data)
                for pk, seq, kind, ts, data in rows
            ],
            batch_size=1000,
            ignore_conflicts=True,
        )
        return
    now = dj_timezone.now()
    connection.ensure_connection()
    # A psycopg cursor on Django's connection, inside its transaction.
    with psycopg.Cursor(connection.connection) as cursor:
        cursor.execute(_STAGE)
        cursor.execute("DELETE FROM telemetry_incoming")
        with cursor.copy(_COPY) as copy:
            copy.set_types(_COPY_TYPES)
            for pk, seq, kind, ts, data in rows:
                copy.write_row((pk, seq, kind, ts, orjson.dumps(data).decode()))
        cursor.execute(_MOVE, [now])


def store_telemetry(device: Device, batch: protocol.Telemetry) -> int:
    """Store one batch once per (device, seq) and return the seq to acknowledge."""
    return store_batches([Received(device, batch)]).acks[device.pk]


def _advance(by_device: dict[int, list[Received]], seen_at: datetime | None) -> dict[int, int]:
    """Move each device's contiguous watermark forward and keep its newest heartbeat.

    Three statements for the whole batch: lock the devices (in pk order, so
    two bridges queue instead of deadlocking), read the stored seqs above each
    watermark, write the new watermarks back.
    """
    batches = {pk: [item.message for item in items] for pk, items in by_device.items()}
    locked = {
        d.pk: d
        for d in Device.objects.select_for_update()
        .filter(pk__in=batches)
        .only("pk", "telemetry_acked_seq", "last_heartbeat", "agent_version", "last_seen")
        .order_by("pk")
    }
    watermarks: dict[int, int] = {}
    for pk, device in locked.items():
        floors = [b.floor for b in batches[pk] if b.floor is not None]
        watermarks[pk] = max([device.telemetry_acked_seq, *(f - 1 for f in floors)])
    # Every seq of this batch is stored now (inserted here, or the conflict
    # proves a committed row), so the walk starts through them without a read;
    # the database is asked only about what lies beyond, which is empty unless
    # records arrived out of order.
    for pk in watermarks:
        present = {r.seq for b in batches[pk] for r in b.records}
        while watermarks[pk] + 1 in present:
            watermarks[pk] += 1
    stored = _stored_above(watermarks)
    gaps: set[int] = set()
    for pk, seq in stored:
        if pk in gaps:
            continue
        if seq == watermarks[pk] + 1:
            watermarks[pk] = seq
        else:
            gaps.add(pk)
    beating: list[Device] = []
    for pk, device in locked.items():
        device.telemetry_acked_seq = watermarks[pk]
        for item in by_device[pk]:
            item.device.telemetry_acked_seq = watermarks[pk]
        latest = _latest_heartbeat([r for b in batches[pk] for r in b.records])
        if latest is not None and latest[0] >= _heartbeat_time(device):
            ts, heartbeat = latest
            device.last_heartbeat = {**heartbeat.model_dump(mode="json"), "ts": ts.isoformat()}
            device.agent_version = heartbeat.agent_version
            beating.append(device)
    _write_back(list(locked.values()), beating, seen_at)
    return watermarks


def _stored_above(watermarks: dict[int, int]) -> list[tuple[int, int]]:
    """(device pk, seq) stored just above each device's watermark, in order."""
    if connection.vendor == "postgresql":
        with psycopg.Cursor(connection.connection) as cursor:
            cursor.execute(
                # LATERAL: one range scan of the (device, seq) index per device; a
                # plain join lets the planner hash the whole table instead.
                # EXISTS first: a device stuck at a gap costs one index probe, not a
                # read of everything stored above the gap on every batch.
                "SELECT w.id, t.seq FROM unnest(%b::bigint[], %b::bigint[]) AS w(id, mark) "
                "CROSS JOIN LATERAL (SELECT seq FROM telemetry_telemetryrecord r WHERE r.device_id = w.id "
                "AND r.seq > w.mark AND r.seq <= w.mark + %b ORDER BY r.seq) t "
                "WHERE EXISTS (SELECT 1 FROM telemetry_telemetryrecord e "
                "WHERE e.device_id = w.id AND e.seq = w.mark + 1) "
                "ORDER BY 1, 2",
                [list(watermarks), list(watermarks.values()), _ACK_WINDOW],
            )
            return [(int(pk), int(seq)) for pk, seq in cursor.fetchall()]
    above = Q()
    for pk, watermark in watermarks.items():
        above |= Q(device_id=pk, seq__gt=watermark, seq__lte=watermark + _ACK_WINDOW)
    return list(TelemetryRecord.objects.filter(above).order_by("device_id", "seq").values_list("device_id", "seq"))


def _write_back(devices: list[Device], beating: list[Device], seen_at: datetime | None) -> None:
    """Save new watermarks, newest heartbeats and presence: one UPDATE from arrays on PostgreSQL.

    One statement and one new row version per device and batch: the device
    rows are the hottest in the database, and every extra UPDATE leaves a dead
    tuple that the next batch's lock has to step over.
    """
    beats = {d.pk for d in beating}
    if connection.vendor != "postgresql":
        fields = ["telemetry_acked_seq", *(["last_seen"] if seen_at else [])]
        for device in devices:
            device.last_seen = max(filter(None, [device.last_seen, seen_at]), default=None)
        Device.objects.bulk_update(devices, fields)
        if beating:
            Device.objects.bulk_update(beating, ["last_heartbeat", "agent_version"])
        return
    table = Device._meta.db_table
    with psycopg.Cursor(connection.connection) as cursor:
        cursor.execute(
            f"UPDATE {table} d SET telemetry_acked_seq = v.seq, "  # noqa: S608 - the table name is ours
            "last_seen = GREATEST(d.last_seen, %b::timestamptz), "
            "last_heartbeat = COALESCE(v.beat, d.last_heartbeat), agent_version = COALESCE(v.version, d.agent_version) "
            "FROM unnest(%b::bigint[], %b::bigint[], %b::text[]::jsonb[], %b::text[]) AS v(id, seq, beat, version) "
            "WHERE d.id = v.id",
            [
                seen_at,
                [d.pk for d in devices],
                [d.telemetry_acked_seq for d in devices],
                [orjson.dumps(d.last_heartbeat).decode() if d.pk in beats else None for d in devices],
                [d.agent_version if d.pk in beats else None for d in devices],
            ],
        )


def _latest_heartbeat(records: list[protocol.TelemetryRecord]) -> tuple[datetime, protocol.Heartbeat] | None:
    """The newest heartbeat whose data is valid.

    A malformed heartbeat is still stored as a record (refusing it would block
    the device's outbox behind it forever) but never shown as the device's state.
    """
    beats = [r for r in records if r.kind == "heartbeat"]
    for record in sorted(beats, key=lambda r: r.seq, reverse=True):
        try:
            return record.ts, protocol.heartbeat_of(record)
        except protocol.ProtocolError as exc:
            log.warning("seq=%d heartbeat data rejected: %s", record.seq, exc)
    return None


def _heartbeat_time(device: Device) -> datetime:
    ts = device.last_heartbeat.get("ts") if isinstance(device.last_heartbeat, dict) else None
    return datetime.fromisoformat(ts) if ts else datetime.min.replace(tzinfo=timezone.utc)

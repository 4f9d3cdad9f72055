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
from dataclasses import dataclass, field
from datetime import datetime
from datetime import timezone as dt_timezone
from typing import Any, NamedTuple

import orjson
import psycopg
from django.db import connection, transaction
from django.db.models import Q
from django.utils import timezone as dj_timezone

from agent.kernel import protocol
from fleet.models import Device, Ingested
from telemetry.models import DeviceClock, TelemetryRecord

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
    """What one call stored: the ack per device pk, and per device pk how many records it restamped."""

    acks: dict[int, int]
    restamped: dict[int, int] = field(default_factory=dict)


def trusted_time(ts: datetime, received_at: datetime) -> datetime:
    """The time to store for what a device dated ``ts``: its own, unless its clock is ahead of ours.

    Nothing the control plane receives can have happened after it arrived,
    so a time more than ``protocol.MAX_AHEAD`` after the receiving time is a
    wrong clock: the receiving time is stored instead (the device's time is
    kept beside it, and the device's clock recorded). Left as it is, it would
    stay the device's newest heartbeat for as long as the clock is ahead, and
    put its windows in buckets nobody reads yet. A time in the past cannot be
    told from a record that waited in the outbox through an outage, so it is
    kept as the device said.
    """
    # A time without an offset (allowed on status, reported and events) is UTC.
    aware = ts if ts.tzinfo is not None else ts.replace(tzinfo=dt_timezone.utc)
    return received_at if aware > received_at + protocol.MAX_AHEAD else ts


def store_batches(batches: Sequence[Received], seen_at: datetime | None = None) -> Stored:
    """Store several devices' batches in one transaction and return the ack per device pk.

    The only way telemetry is stored: a single message is a batch of one.
    ``seen_at`` (when the bridge received them) moves each device's last_seen
    forward in the same statement as its ack.
    """
    received_at = seen_at or dj_timezone.now()
    by_device: dict[int, list[Received]] = defaultdict(list)
    for item in batches:
        by_device[item.device.pk].append(item)
    rows = _rows(by_device, received_at)
    with transaction.atomic():
        _insert(rows)
        acks = _advance(by_device, seen_at, received_at)
        restamped = _record_clocks(rows, received_at)
    return Stored(acks=acks, restamped=restamped)


# Rows are copied (COPY, binary) into a session's staging table, then moved
# with one INSERT ... SELECT in (device, seq) order: sorted rows take index
# locks in one order, so two bridges cannot deadlock, and ON CONFLICT makes a
# redelivered record a no-op. The staging table is emptied before each use
# (and at commit), so nothing carries over from a batch that failed.
_STAGE = (
    "CREATE TEMP TABLE IF NOT EXISTS telemetry_incoming "
    "(device_id bigint, seq bigint, kind text, recorded_at timestamptz, device_ts timestamptz, data text) "
    "ON COMMIT DELETE ROWS"
)
_COPY = "COPY telemetry_incoming (device_id, seq, kind, recorded_at, device_ts, data) FROM STDIN (FORMAT BINARY)"
_COPY_TYPES = ["int8", "int8", "text", "timestamptz", "timestamptz", "text"]
_MOVE = (
    "INSERT INTO telemetry_telemetryrecord (device_id, seq, kind, recorded_at, received_at, device_ts, data) "
    "SELECT device_id, seq, kind, recorded_at, %s, device_ts, data::json FROM telemetry_incoming "
    "ORDER BY device_id, seq ON CONFLICT (device_id, seq) DO NOTHING"
)

# (device pk, seq, kind, recorded_at, device_ts or None, data): plain tuples,
# as model instances cost more to build than the insert of their row.
_Row = tuple[int, int, str, datetime, datetime | None, dict[str, Any]]


def _rows(by_device: dict[int, list[Received]], received_at: datetime) -> list[_Row]:
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
                    at = trusted_time(r.ts, received_at)
                    rows.append((pk, r.seq, r.kind, at, None if at is r.ts else r.ts, r.data))
    return rows


def _record_clocks(rows: list[_Row], received_at: datetime) -> dict[int, int]:
    """Record each device whose records were restamped: how far ahead its clock was, and how many."""
    ahead: dict[int, list[datetime]] = defaultdict(list)
    for pk, _, _, _, device_ts, _ in rows:
        if device_ts is not None:
            ahead[pk].append(device_ts)
    for pk, times in sorted(ahead.items()):
        DeviceClock.observe(pk, max(times), received_at, len(times))
    if ahead:
        log.warning(
            "device clocks ahead: records stored at the receiving time",
            extra={"devices": len(ahead), "records": sum(map(len, ahead.values()))},
        )
    return {pk: len(times) for pk, times in ahead.items()}


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
                TelemetryRecord(device_id=pk, seq=seq, kind=kind, recorded_at=ts, device_ts=device_ts, data=data)
                for pk, seq, kind, ts, device_ts, data in rows
            ],
            batch_size=1000,
            ignore_conflicts=True,
        )
        return
    now = dj_timezone.now()
    connection.ensure_connection()
    # A psycopg cursor on Django's connection, inside its transaction; its
    # errors are raised as Django's, as they would be from a Django cursor.
    with connection.wrap_database_errors, psycopg.Cursor(connection.connection) as cursor:
        cursor.execute(_STAGE)
        cursor.execute("DELETE FROM telemetry_incoming")
        with cursor.copy(_COPY) as copy:
            copy.set_types(_COPY_TYPES)
            for pk, seq, kind, ts, device_ts, data in rows:
                copy.write_row((pk, seq, kind, ts, device_ts, orjson.dumps(data).decode()))
        cursor.execute(_MOVE, [now])


def _advance(by_device: dict[int, list[Received]], seen_at: datetime | None, received_at: datetime) -> dict[int, int]:
    """Move each device's contiguous watermark forward and keep its newest heartbeat.

    Three statements for the whole batch: lock the devices (the fleet layer
    takes them in pk order, so two bridges queue instead of deadlocking), read
    the stored seqs above each watermark, write the new watermarks back with
    the devices' liveness (``touch_seen_bulk``, its only writer).
    """
    batches = {pk: [item.message for item in items] for pk, items in by_device.items()}
    locked = Device.objects.lock_watermarks(batches)
    watermarks: dict[int, int] = {}
    for pk, acked in locked.items():
        floors = [b.floor for b in batches[pk] if b.floor is not None]
        watermarks[pk] = max([acked, *(f - 1 for f in floors)])
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
    progress: list[Ingested] = []
    for pk in locked:
        for item in by_device[pk]:
            item.device.telemetry_acked_seq = watermarks[pk]
        latest = _latest_heartbeat([r for b in batches[pk] for r in b.records])
        if latest is None:
            progress.append(Ingested(pk, watermarks[pk]))
        else:
            ts, heartbeat = latest
            # Never later than it arrived, not even within the clock tolerance:
            # the newest heartbeat is the device's state, and one dated minutes
            # ahead would hold off every heartbeat after it for those minutes
            # (for good, from a clock far ahead).
            at = min(ts, received_at)
            progress.append(Ingested(pk, watermarks[pk], at, heartbeat.model_dump(mode="json")))
    Device.objects.touch_seen_bulk(progress, seen_at)
    return watermarks


def _stored_above(watermarks: dict[int, int]) -> list[tuple[int, int]]:
    """(device pk, seq) stored just above each device's watermark, in order."""
    if connection.vendor == "postgresql":
        with connection.wrap_database_errors, psycopg.Cursor(connection.connection) as cursor:
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
            log.warning("heartbeat data rejected", extra={"seq": record.seq, "error": str(exc)})
    return None

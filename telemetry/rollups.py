"""Per-minute and per-hour rollups per device, per site and per model version.

Raw records are grouped by the minute of their timestamp. A run recomputes
every (device, minute) that received a record since the previous run, then
the hours holding those minutes, then the site and fleet rows of the touched
buckets. Each row is rebuilt whole from its sources and upserted, so running
twice, or two workers at once, leaves the same rows.

Device-minute rows come from raw windows; device-hour rows from device-minute
rows; site and fleet rows (per model version) from device rows of the same
resolution, which is how they know how many devices contributed.

No stored row can stop the rollups: a record whose time cannot be read back
or bucketed, or whose fields the protocol refuses, is quarantined
(``Quarantine``, source ``rollups``: recorded, counted, alerted on per
device) and left out; if rebuilding the touched buckets fails all the same,
they are rebuilt one device at a time and a device that still fails is
quarantined. The cursor moves past every record read, whatever became of it.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from typing import Any, cast

from django.conf import settings
from django.db import transaction
from django.db.models import QuerySet, TextField
from django.db.models.functions import Cast
from django.utils import timezone

from agent.kernel import protocol
from fleet.models import Device
from telemetry.metrics import Summary
from telemetry.models import (
    Cursor,
    DeviceEvent,
    HeartbeatRollup,
    Quarantine,
    Resolution,
    Scope,
    TelemetryRecord,
    WindowRollup,
)

log = logging.getLogger(__name__)

CURSOR = "rollups"
MINUTE = timedelta(minutes=1)
HOUR = timedelta(hours=1)
# Records received in one run beyond this wait for the next run, which bounds
# the memory and time of one task.
MAX_RECORDS_PER_RUN = 200_000
# received_at is set when a bridge inserts, but the row is visible only when
# its transaction commits; reading up to a few seconds ago keeps a run from
# stepping past a row committed just after it looked (bridge transactions
# last milliseconds).
SETTLE = timedelta(seconds=10)
# Record times the rollups can read back and bucket. PostgreSQL holds times
# Python's datetime cannot (year 1 at +14:00 is 1 BC in UTC; year 9999 at
# -14:00 is year 10000): one such row made every run fail on reading it, so
# the cursor never moved and no device's rollups advanced again. A margin of
# a year either side keeps bucket arithmetic (a minute, an hour) in range.
READABLE = (datetime(2, 1, 1, tzinfo=dt_timezone.utc), datetime(9998, 12, 31, tzinfo=dt_timezone.utc))
QUARANTINE_SOURCE = "rollups"
_WINDOW_FIELDS = [
    "devices",
    "windows",
    "fallback_windows",
    "frames",
    "dropped_frames",
    "errors",
    "escalations",
    "latency",
    "confidence",
    "classes",
    "shadow_frames",
    "shadow_errors",
    "shadow_compared",
    "shadow_agreed",
    "shadow_latency",
]
_WINDOW_KEY = ["resolution", "scope", "key", "model_name", "model_version", "bucket"]
_HEARTBEAT_FIELDS = [
    "heartbeats",
    "cpu_percent_sum",
    "cpu_percent_max",
    "memory_percent_max",
    "disk_percent_max",
    "temperature_c_max",
    "cpu_freq_mhz_min",
    "cpu_freq_mhz_max",
    "outbox_depth_max",
]

VersionKey = tuple[str, str]  # (model_name, model_version)


def floor_to(moment: datetime, step: timedelta) -> datetime:
    seconds = int(step.total_seconds())
    epoch = int(moment.timestamp())
    return moment - timedelta(seconds=epoch % seconds, microseconds=moment.microsecond)


@dataclass(frozen=True)
class RunResult:
    records: int
    device_minutes: int
    until: datetime | None


def roll_up(now: datetime | None = None) -> RunResult:
    """Roll up everything received since the last run. Idempotent; safe on several workers."""
    now = now or timezone.now()
    with transaction.atomic():
        cursor, _ = Cursor.objects.select_for_update().get_or_create(
            name=CURSOR, defaults={"position": now - timedelta(days=1)}
        )
        pending = TelemetryRecord.objects.filter(received_at__gt=cursor.position, received_at__lte=now - SETTLE)
        _quarantine_unreadable(pending)
        received = (
            pending.filter(recorded_at__range=READABLE)
            .order_by("received_at")
            .values_list("device_id", "recorded_at", "received_at")[:MAX_RECORDS_PER_RUN]
        )
        touched: set[tuple[int, datetime]] = set()
        last: datetime | None = None
        count = 0
        for device_id, recorded_at, received_at in received:
            touched.add((device_id, floor_to(recorded_at, MINUTE)))
            last = received_at
            count += 1
        if touched:
            _recompute_or_quarantine(touched)
        if count < MAX_RECORDS_PER_RUN:
            # Everything readable up to the settling time is done: step past
            # the quarantined rows too, even when no readable row came after them.
            newest = pending.order_by("-received_at").values_list("received_at", flat=True).first()
            if newest is not None and (last is None or newest > last):
                last = newest
        if last is not None:
            # A full page may stop inside a run of equal received_at values;
            # stepping back a microsecond re-reads them next time (harmless).
            cursor.position = last - timedelta(microseconds=1) if count == MAX_RECORDS_PER_RUN else last
            cursor.save(update_fields=["position"])
    return RunResult(records=count, device_minutes=len(touched), until=last)


def _quarantine_unreadable(pending: QuerySet[TelemetryRecord]) -> None:
    """Quarantine the records of this run whose times the rollups cannot read back; they are left out."""
    unreadable = (
        pending.exclude(recorded_at__range=READABLE)
        .annotate(at=Cast("recorded_at", TextField()))
        .values_list("pk", "device_id", "seq", "at")
    )
    for pk, device_id, seq, at in unreadable:
        _quarantine(f"telemetry_record:{pk}", "unreadable_time", f"seq {seq} recorded_at {at}", device_id)


def _quarantine(ref: str, reason: str, detail: str, device_id: int | None) -> None:
    log.warning(
        "rollups quarantined a row", extra={"ref": ref, "reason": reason, "device_pk": device_id, "detail": detail}
    )
    Quarantine.note(QUARANTINE_SOURCE, ref, reason, detail, device_id=device_id)


def _recompute_or_quarantine(pairs: set[tuple[int, datetime]]) -> None:
    """``recompute`` the lot; if that fails, one device at a time, quarantining a device that still fails."""
    try:
        with transaction.atomic():
            recompute(pairs)
        return
    except Exception:
        log.warning("rollup run failed, rebuilding one device at a time", exc_info=True)
    by_device: dict[int, set[tuple[int, datetime]]] = defaultdict(set)
    for pk, minute in pairs:
        by_device[pk].add((pk, minute))
    for pk, minutes in sorted(by_device.items()):
        try:
            with transaction.atomic():
                recompute(minutes)
        except Exception as exc:
            first, last = min(m for _, m in minutes), max(m for _, m in minutes)
            _quarantine(
                f"device_minutes:{pk}:{first.isoformat()}",
                type(exc).__name__,
                f"{len(minutes)} minutes from {first.isoformat()} to {last.isoformat()}: {exc}"[:2000],
                pk,
            )


def recompute(device_minutes: Iterable[tuple[int, datetime]]) -> None:
    """Rebuild the rows that depend on these (device pk, minute) pairs."""
    pairs = set(device_minutes)
    devices = {d.pk: d for d in Device.objects.filter(pk__in={pk for pk, _ in pairs}).select_related("site")}
    _device_minutes(pairs, devices)
    hours = {(pk, floor_to(minute, HOUR)) for pk, minute in pairs}
    _device_hours(hours, devices)
    for resolution, buckets in ((Resolution.MINUTE, {m for _, m in pairs}), (Resolution.HOUR, {h for _, h in hours})):
        _scopes(resolution, buckets)


def _device_minutes(pairs: set[tuple[int, datetime]], devices: dict[int, Device]) -> None:
    start = min(m for _, m in pairs)
    end = max(m for _, m in pairs) + MINUTE
    raw = TelemetryRecord.objects.filter(
        device_id__in={pk for pk, _ in pairs}, recorded_at__gte=start, recorded_at__lt=end
    ).values_list("pk", "device_id", "seq", "kind", "recorded_at", "device_ts", "data")
    windows: dict[tuple[int, datetime, VersionKey], Summary] = defaultdict(Summary)
    beats: dict[tuple[int, datetime], list[protocol.Heartbeat]] = defaultdict(list)
    for pk, device_id, seq, kind, recorded_at, device_ts, data in raw:
        minute = floor_to(recorded_at, MINUTE)
        if (device_id, minute) not in pairs:
            continue
        try:
            # A window is checked against the time the device gave its record
            # (its start and end come from the same clock), bucketed by the stored one.
            record = protocol.TelemetryRecord(seq=seq, kind=cast(Any, kind), ts=device_ts or recorded_at, data=data)
            if kind == "window":
                window = protocol.window_of(record)
                version = (window.model_name or "", window.model_version or "")
                windows[(device_id, minute, version)].add_window(window)
            elif kind == "heartbeat":
                beats[(device_id, minute)].append(protocol.heartbeat_of(record))
        except Exception as exc:
            # Stored raw for inspection (refusing it would block the device's
            # outbox), but left out of every figure. Rows the bridge stored
            # passed decode; one written by anything else may hold anything.
            reason = exc.reason if isinstance(exc, protocol.ProtocolError) else type(exc).__name__
            _quarantine(f"telemetry_record:{pk}", reason, f"seq {seq} kind {kind}: {exc}"[:2000], device_id)
    rows = [
        WindowRollup(
            resolution=Resolution.MINUTE,
            scope=Scope.DEVICE,
            key=devices[pk].device_id,
            model_name=name,
            model_version=version,
            bucket=minute,
            devices=1,
            **summary.totals(),
        )
        for (pk, minute, (name, version)), summary in windows.items()
    ]
    _upsert_windows(rows)
    _upsert_heartbeats(
        [_heartbeat_row(Resolution.MINUTE, devices[pk], minute, hb) for (pk, minute), hb in beats.items()]
    )


def _heartbeat_row(
    resolution: str, device: Device, bucket: datetime, beats: list[protocol.Heartbeat]
) -> HeartbeatRollup:
    temperatures = [b.temperature_c for b in beats if b.temperature_c is not None]
    freqs = [b.cpu_freq_mhz for b in beats if b.cpu_freq_mhz is not None]
    return HeartbeatRollup(
        resolution=resolution,
        device=device,
        bucket=bucket,
        heartbeats=len(beats),
        cpu_percent_sum=sum(b.cpu_percent for b in beats),
        cpu_percent_max=max(b.cpu_percent for b in beats),
        memory_percent_max=max(b.memory_percent for b in beats),
        disk_percent_max=max(b.disk_percent for b in beats),
        temperature_c_max=max(temperatures) if temperatures else None,
        cpu_freq_mhz_min=min(freqs) if freqs else None,
        cpu_freq_mhz_max=max(freqs) if freqs else None,
        outbox_depth_max=max(b.outbox_depth for b in beats),
    )


def _device_hours(hours: set[tuple[int, datetime]], devices: dict[int, Device]) -> None:
    keys = {devices[pk].device_id: pk for pk, _ in hours}
    starts = {h for _, h in hours}
    minute_rows = WindowRollup.objects.filter(
        resolution=Resolution.MINUTE,
        scope=Scope.DEVICE,
        key__in=keys,
        bucket__gte=min(starts),
        bucket__lt=max(starts) + HOUR,
    )
    merged: dict[tuple[str, datetime, VersionKey], Summary] = defaultdict(Summary)
    for row in minute_rows:
        hour = floor_to(row.bucket, HOUR)
        if (keys[row.key], hour) in hours:
            merged[(row.key, hour, (row.model_name, row.model_version))].add_totals(row)
    _upsert_windows(
        [
            WindowRollup(
                resolution=Resolution.HOUR,
                scope=Scope.DEVICE,
                key=key,
                model_name=name,
                model_version=version,
                bucket=hour,
                devices=1,
                **summary.totals(),
            )
            for (key, hour, (name, version)), summary in merged.items()
        ]
    )
    beat_rows = HeartbeatRollup.objects.filter(
        resolution=Resolution.MINUTE,
        device_id__in={pk for pk, _ in hours},
        bucket__gte=min(starts),
        bucket__lt=max(starts) + HOUR,
    )
    by_hour: dict[tuple[int, datetime], list[HeartbeatRollup]] = defaultdict(list)
    for beat in beat_rows:
        hour = floor_to(beat.bucket, HOUR)
        if (beat.device_id, hour) in hours:
            by_hour[(beat.device_id, hour)].append(beat)
    _upsert_heartbeats([_merge_heartbeats(devices[pk], hour, rows) for (pk, hour), rows in by_hour.items()])


def _merge_heartbeats(device: Device, hour: datetime, rows: list[HeartbeatRollup]) -> HeartbeatRollup:
    def extreme(values: Iterable[float | None], pick: Callable[[list[float]], float]) -> float | None:
        present = [v for v in values if v is not None]
        return pick(present) if present else None

    return HeartbeatRollup(
        resolution=Resolution.HOUR,
        device=device,
        bucket=hour,
        heartbeats=sum(r.heartbeats for r in rows),
        cpu_percent_sum=sum(r.cpu_percent_sum for r in rows),
        cpu_percent_max=max(r.cpu_percent_max for r in rows),
        memory_percent_max=max(r.memory_percent_max for r in rows),
        disk_percent_max=max(r.disk_percent_max for r in rows),
        temperature_c_max=extreme((r.temperature_c_max for r in rows), max),
        cpu_freq_mhz_min=extreme((r.cpu_freq_mhz_min for r in rows), min),
        cpu_freq_mhz_max=extreme((r.cpu_freq_mhz_max for r in rows), max),
        outbox_depth_max=max(r.outbox_depth_max for r in rows),
    )


def _scopes(resolution: str, buckets: set[datetime]) -> None:
    """Rebuild the site and fleet rows of these buckets from all device rows in them."""
    site_of = dict(Device.objects.values_list("device_id", "site__slug"))
    merged: dict[tuple[str, str, datetime, VersionKey], Summary] = defaultdict(Summary)
    contributors: dict[tuple[str, str, datetime, VersionKey], int] = defaultdict(int)
    rows = WindowRollup.objects.filter(resolution=resolution, scope=Scope.DEVICE, bucket__in=buckets)
    for row in rows.iterator(chunk_size=2000):
        version = (row.model_name, row.model_version)
        for scope, key in ((Scope.SITE, site_of.get(row.key)), (Scope.FLEET, "*")):
            if key is None:
                continue
            merged[(scope, key, row.bucket, version)].add_totals(row)
            contributors[(scope, key, row.bucket, version)] += 1
    _upsert_windows(
        [
            WindowRollup(
                resolution=resolution,
                scope=scope,
                key=key,
                model_name=name,
                model_version=version,
                bucket=bucket,
                devices=contributors[(scope, key, bucket, (name, version))],
                **summary.totals(),
            )
            for (scope, key, bucket, (name, version)), summary in merged.items()
        ]
    )


def _upsert_windows(rows: list[WindowRollup]) -> None:
    if rows:
        WindowRollup.objects.bulk_create(
            rows, batch_size=1000, update_conflicts=True, unique_fields=_WINDOW_KEY, update_fields=_WINDOW_FIELDS
        )


def _upsert_heartbeats(rows: list[HeartbeatRollup]) -> None:
    if rows:
        HeartbeatRollup.objects.bulk_create(
            rows,
            batch_size=1000,
            update_conflicts=True,
            unique_fields=["resolution", "device", "bucket"],
            update_fields=_HEARTBEAT_FIELDS,
        )


def apply_retention(now: datetime | None = None) -> dict[str, int]:
    """Delete raw records and rollups past their retention; returns rows deleted per table."""
    now = now or timezone.now()
    raw_cutoff = now - timedelta(days=settings.TELEMETRY_RAW_RETENTION_DAYS)
    rollup_cutoff = now - timedelta(days=settings.TELEMETRY_ROLLUP_RETENTION_DAYS)
    deleted = {
        "records": _delete_in_chunks(TelemetryRecord.objects.filter(recorded_at__lt=raw_cutoff)),
        "window_rollups": _delete_in_chunks(WindowRollup.objects.filter(bucket__lt=rollup_cutoff)),
        "heartbeat_rollups": _delete_in_chunks(HeartbeatRollup.objects.filter(bucket__lt=rollup_cutoff)),
    }
    deleted["events"] = _delete_in_chunks(DeviceEvent.objects.filter(at__lt=rollup_cutoff))
    # A quarantined row not seen again for as long as rollups are kept is history.
    deleted["quarantine"] = _delete_in_chunks(Quarantine.objects.filter(last_at__lt=rollup_cutoff))
    return deleted


def _delete_in_chunks(queryset: object, chunk: int = 10_000) -> int:
    """Delete in short transactions so retention never holds long locks on hot tables."""
    total = 0
    while True:
        ids = list(queryset.values_list("pk", flat=True)[:chunk])  # type: ignore[attr-defined]
        if not ids:
            return total
        count, _ = queryset.model.objects.filter(pk__in=ids).delete()  # type: ignore[attr-defined]
        total += count

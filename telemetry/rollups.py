"""Per-minute and per-hour rollups per device, per site and per model version, kept up to date incrementally.

Raw records are grouped by the minute of their timestamp. A run reads what
was received since the previous run and rebuilds each touched (device,
minute) whole from its raw records. Every row above it follows by
difference: the device's hour, the site's and the fleet's minute and hour
take the new minute's totals and give back the old one's. So a run costs
what it touched, whatever the fleet's size and however far into the hour
(rebuilding a device hour from its minutes read 600,000 rows at an hour's
end at 10,000 devices). Running twice leaves the same rows: the second run
finds every minute as it left it and changes nothing.

Runs take turns on the cursor's row lock; ``recompute`` called on its own
takes the same lock, so no two writers add a difference to the same row at
once. ``telemetry.rollup_rebuild`` rebuilds rows whole from their sources:
the repair path when a row cannot take its difference (a row that would go
below zero), and the measure the incremental run is tested against.

Device-minute rows come from raw windows; site and fleet rows (per model
version) count the device rows that joined them, which is how they know how
many devices contributed. A device that moves site leaves what it sent
before with the site it was at.

No stored row can stop the rollups: a record whose time cannot be read back
or bucketed, or whose fields the protocol refuses, is quarantined
(``Quarantine``, source ``rollups``: recorded, counted, alerted on per
device) and left out; if bringing the touched buckets up to date fails all
the same, they are brought up one device at a time, rebuilt whole where that
fails, and a device that still fails is quarantined. The cursor moves past
every record read, whatever became of it.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone

from django.conf import settings
from django.db import transaction
from django.db.models import QuerySet, TextField
from django.db.models.functions import Cast
from django.utils import timezone

from fleet.models import Device
from telemetry import rollup_rebuild
from telemetry import rollup_rows as rows
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
from telemetry.rollup_rows import floor_to

log = logging.getLogger(__name__)

CURSOR = "rollups"
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
            touched.add((device_id, floor_to(recorded_at, rows.MINUTE)))
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
        rows.quarantine(f"telemetry_record:{pk}", "unreadable_time", f"seq {seq} recorded_at {at}", device_id)


def _recompute_or_quarantine(pairs: set[tuple[int, datetime]]) -> None:
    """``recompute`` the lot; if that fails, one device at a time, then rebuilt whole, then quarantined."""
    try:
        with transaction.atomic():
            recompute(pairs)
        return
    except Exception:
        log.warning("rollup run failed, bringing one device up to date at a time", exc_info=True)
    by_device: dict[int, set[tuple[int, datetime]]] = defaultdict(set)
    for pk, minute in pairs:
        by_device[pk].add((pk, minute))
    for pk, minutes in sorted(by_device.items()):
        try:
            with transaction.atomic():
                recompute(minutes)
            continue
        except Exception:
            log.warning("rollups of a device failed, rebuilding them whole", extra={"device_pk": pk}, exc_info=True)
        try:
            rollup_rebuild.rebuild(minutes)
        except Exception as exc:
            first, last = min(m for _, m in minutes), max(m for _, m in minutes)
            rows.quarantine(
                f"device_minutes:{pk}:{first.isoformat()}",
                type(exc).__name__,
                f"{len(minutes)} minutes from {first.isoformat()} to {last.isoformat()}: {exc}"[:2000],
                pk,
            )


class RowBelowZero(Exception):
    """A rollup row would go below zero taking a difference: it no longer is the sum of its sources."""


# A changed row's difference (new totals less old) and whether the row is new.
Change = tuple[Summary, bool]


def recompute(device_minutes: Iterable[tuple[int, datetime]]) -> None:
    """Bring every rollup row that depends on these (device pk, minute) pairs up to date."""
    pairs = set(device_minutes)
    if not pairs:
        return
    with transaction.atomic():
        Cursor.objects.select_for_update().get_or_create(
            name=CURSOR, defaults={"position": timezone.now() - timedelta(days=1)}
        )
        devices = {d.pk: d for d in Device.objects.filter(pk__in={pk for pk, _ in pairs}).select_related("site")}
        windows, beats = rows.read_minutes(pairs, devices)
        site_of = {d.device_id: d.site.slug for d in devices.values()}
        minutes = _device_minutes(windows)
        hours = _device_hours(minutes)
        _scopes(Resolution.MINUTE, minutes, site_of)
        _scopes(Resolution.HOUR, hours, site_of)
        _heartbeats(beats, devices)


def _device_minutes(windows: dict[rows.WindowKey, Summary]) -> dict[rows.WindowKey, Change]:
    """Store the device minutes that changed; returns each one's difference."""
    stored = rows.windows_at(Resolution.MINUTE, Scope.DEVICE, {(key, minute) for key, minute, _ in windows})
    changes: dict[rows.WindowKey, Change] = {}
    for key, summary in windows.items():
        before = stored.get(key)
        old = rows.summary_of(before)
        if before is not None and summary.totals() == old.totals():
            continue
        changes[key] = (Summary().add(summary).add(old, -1), before is None)
    rows.upsert_windows(
        [rows.window_row(Resolution.MINUTE, Scope.DEVICE, key, windows[key]) for key in sorted(changes)]
    )
    return changes


def _device_hours(minutes: dict[rows.WindowKey, Change]) -> dict[rows.WindowKey, Change]:
    """Add the minutes' differences to their device hours; returns each hour's difference."""
    deltas: dict[rows.WindowKey, Summary] = defaultdict(Summary)
    for (key, minute, version), (delta, _) in minutes.items():
        deltas[(key, rows.floor_to(minute, rows.HOUR), version)].add(delta)
    stored = rows.windows_at(Resolution.HOUR, Scope.DEVICE, {(key, hour) for key, hour, _ in deltas})
    changes: dict[rows.WindowKey, Change] = {}
    updated = []
    for hour_key in sorted(deltas):
        before = stored.get(hour_key)
        updated.append(rows.window_row(Resolution.HOUR, Scope.DEVICE, hour_key, _plus(before, deltas[hour_key])))
        changes[hour_key] = (deltas[hour_key], before is None)
    rows.upsert_windows(updated)
    return changes


def _scopes(resolution: str, changes: dict[rows.WindowKey, Change], site_of: dict[str, str]) -> None:
    """Add device rows' differences to their site's and the fleet's rows, counting the device rows that joined."""
    deltas: dict[tuple[str, rows.WindowKey], Summary] = defaultdict(Summary)
    joined: dict[tuple[str, rows.WindowKey], int] = defaultdict(int)
    for (key, bucket, version), (delta, created) in changes.items():
        for scope, name in ((Scope.SITE, site_of[key]), (Scope.FLEET, "*")):
            deltas[(scope, (name, bucket, version))].add(delta)
            joined[(scope, (name, bucket, version))] += int(created)
    for scope in (Scope.SITE, Scope.FLEET):
        row_keys = sorted(row_key for s, row_key in deltas if s == scope)
        stored = rows.windows_at(resolution, scope, {(name, bucket) for name, bucket, _ in row_keys})
        updated = []
        for row_key in row_keys:
            before = stored.get(row_key)
            contributors = (before.devices if before is not None else 0) + joined[(scope, row_key)]
            total = _plus(before, deltas[(scope, row_key)])
            updated.append(rows.window_row(resolution, scope, row_key, total, devices=contributors))
        rows.upsert_windows(updated)


def _plus(row: WindowRollup | None, delta: Summary) -> Summary:
    total = rows.summary_of(row).add(delta)
    if total.has_negative():
        raise RowBelowZero(f"{row.resolution} {row.scope} {row.key} {row.bucket:%Y-%m-%dT%H:%M}" if row else "new row")
    return total


def _heartbeats(minutes: dict[tuple[int, datetime], HeartbeatRollup], devices: dict[int, Device]) -> None:
    """Store the heartbeat minutes that changed and carry them into their hours.

    Counts and sums take the difference; extremes take the new minute's,
    which only ever widen as records arrive.
    """
    stored = rows.heartbeats_at(Resolution.MINUTE, minutes)
    changed = {
        key: (row, stored.get(key))
        for key, row in minutes.items()
        if key not in stored or _beat_values(stored[key]) != _beat_values(row)
    }
    rows.upsert_heartbeats([changed[key][0] for key in sorted(changed)])
    by_hour: dict[tuple[int, datetime], list[tuple[HeartbeatRollup, HeartbeatRollup | None]]] = defaultdict(list)
    for (pk, minute), pair in changed.items():
        by_hour[(pk, rows.floor_to(minute, rows.HOUR))].append(pair)
    hours = rows.heartbeats_at(Resolution.HOUR, by_hour)
    updated = []
    for (pk, hour), pairs in sorted(by_hour.items()):
        before = hours.get((pk, hour))
        merged = rows.merge_heartbeats(devices[pk], hour, [*([before] if before else []), *(new for new, _ in pairs)])
        merged.heartbeats -= sum(old.heartbeats for _, old in pairs if old is not None)
        merged.cpu_percent_sum -= sum(old.cpu_percent_sum for _, old in pairs if old is not None)
        if merged.heartbeats < 0:
            raise RowBelowZero(f"heartbeats {pk} {hour:%Y-%m-%dT%H:%M}")
        updated.append(merged)
    rows.upsert_heartbeats(updated)


def _beat_values(row: HeartbeatRollup) -> tuple[object, ...]:
    return tuple(getattr(row, name) for name in rows.HEARTBEAT_FIELDS)


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

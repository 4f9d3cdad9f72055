"""The rollup tables' rows: device minutes read from raw records, rows read and written by bucket.

Both ways of building rollups use these: the incremental run
(``telemetry.rollups``) and the full rebuild from sources
(``telemetry.rollup_rebuild``). Reads are by bucket, each bucket with the
devices touched in it, so a run that touches a few devices over many minutes
reads those devices' rows and not every device's.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime, timedelta
from typing import Any, TypeVar, cast

from django.db.models import Q

from agent.kernel import protocol
from fleet.models import Device
from telemetry.metrics import Summary
from telemetry.models import HeartbeatRollup, Quarantine, Resolution, TelemetryRecord, WindowRollup

log = logging.getLogger(__name__)

MINUTE = timedelta(minutes=1)
HOUR = timedelta(hours=1)
QUARANTINE_SOURCE = "rollups"
# A window row stores how many devices contributed and a Summary's additive totals.
WINDOW_FIELDS = ["devices", *Summary().totals()]
WINDOW_KEY = ["resolution", "scope", "key", "model_name", "model_version", "bucket"]
HEARTBEAT_FIELDS = [
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
# Keys per query when reading by bucket: one query's IN lists stay this long at most.
_KEYS_PER_QUERY = 5000

VersionKey = tuple[str, str]  # (model_name, model_version)
# A window row's identity within one resolution and scope: (key, bucket, version).
WindowKey = tuple[str, datetime, VersionKey]
K = TypeVar("K")


def floor_to(moment: datetime, step: timedelta) -> datetime:
    seconds = int(step.total_seconds())
    epoch = int(moment.timestamp())
    return moment - timedelta(seconds=epoch % seconds, microseconds=moment.microsecond)


def quarantine(ref: str, reason: str, detail: str, device_id: int | None) -> None:
    log.warning(
        "rollups quarantined a row", extra={"ref": ref, "reason": reason, "device_pk": device_id, "detail": detail}
    )
    Quarantine.note(QUARANTINE_SOURCE, ref, reason, detail, device_id=device_id)


def by_bucket(pairs: Iterable[tuple[K, datetime]]) -> dict[datetime, set[K]]:
    groups: dict[datetime, set[K]] = defaultdict(set)
    for key, bucket in pairs:
        groups[bucket].add(key)
    return groups


def bucket_filters(groups: dict[datetime, set[K]], match: Callable[[datetime, set[K]], Q]) -> Iterator[Q]:
    """OR-ed filters of (bucket, its keys), split so no query carries more than ``_KEYS_PER_QUERY`` keys."""
    pending: Q | None = None
    size = 0
    for bucket, keys in sorted(groups.items()):
        ordered = sorted(keys)  # type: ignore[type-var]
        for i in range(0, len(ordered), _KEYS_PER_QUERY):
            part = ordered[i : i + _KEYS_PER_QUERY]
            if pending is not None and size + len(part) > _KEYS_PER_QUERY:
                yield pending
                pending, size = None, 0
            clause = match(bucket, set(part))
            pending = clause if pending is None else pending | clause
            size += len(part)
    if pending is not None:
        yield pending


def windows_at(resolution: str, scope: str, keys: Iterable[tuple[str, datetime]]) -> dict[WindowKey, WindowRollup]:
    """The stored window rows of these (key, bucket) pairs, every model version of each."""
    rows: dict[WindowKey, WindowRollup] = {}
    base = WindowRollup.objects.filter(resolution=resolution, scope=scope)
    for clause in bucket_filters(by_bucket(keys), lambda bucket, ks: Q(bucket=bucket, key__in=ks)):
        for row in base.filter(clause):
            rows[(row.key, row.bucket, (row.model_name, row.model_version))] = row
    return rows


def heartbeats_at(
    resolution: str, pairs: Iterable[tuple[int, datetime]]
) -> dict[tuple[int, datetime], HeartbeatRollup]:
    """The stored heartbeat rows of these (device pk, bucket) pairs."""
    rows: dict[tuple[int, datetime], HeartbeatRollup] = {}
    base = HeartbeatRollup.objects.filter(resolution=resolution)
    for clause in bucket_filters(by_bucket(pairs), lambda bucket, pks: Q(bucket=bucket, device_id__in=pks)):
        for row in base.filter(clause):
            rows[(row.device_id, row.bucket)] = row
    return rows


def read_minutes(
    pairs: set[tuple[int, datetime]], devices: dict[int, Device]
) -> tuple[dict[WindowKey, Summary], dict[tuple[int, datetime], HeartbeatRollup]]:
    """Each (device pk, minute)'s windows per model version and its heartbeat row, from raw records.

    A record the protocol refuses is quarantined and left out.
    """
    windows: dict[WindowKey, Summary] = defaultdict(Summary)
    beats: dict[tuple[int, datetime], list[protocol.Heartbeat]] = defaultdict(list)
    raw = TelemetryRecord.objects.filter(kind__in=("window", "heartbeat"))
    for clause in bucket_filters(by_bucket(pairs), _raw_minute):
        found = raw.filter(clause).values_list("pk", "device_id", "seq", "kind", "recorded_at", "device_ts", "data")
        for pk, device_id, seq, kind, recorded_at, device_ts, data in found:
            minute = floor_to(recorded_at, MINUTE)
            try:
                # A window is checked against the time the device gave its record
                # (its start and end come from the same clock), bucketed by the stored one.
                ts = device_ts or recorded_at
                record = protocol.TelemetryRecord(seq=seq, kind=cast(Any, kind), ts=ts, data=data)
                if kind == "window":
                    window = protocol.window_of(record)
                    version = (window.model_name or "", window.model_version or "")
                    windows[(devices[device_id].device_id, minute, version)].add_window(window)
                else:
                    beats[(device_id, minute)].append(protocol.heartbeat_of(record))
            except Exception as exc:
                # Stored raw for inspection (refusing it would block the device's
                # outbox), but left out of every figure. Rows the bridge stored
                # passed decode; one written by anything else may hold anything.
                reason = exc.reason if isinstance(exc, protocol.ProtocolError) else type(exc).__name__
                quarantine(f"telemetry_record:{pk}", reason, f"seq {seq} kind {kind}: {exc}"[:2000], device_id)
    beat_rows = {
        (pk, minute): heartbeat_row(Resolution.MINUTE, devices[pk], minute, hb) for (pk, minute), hb in beats.items()
    }
    return dict(windows), beat_rows


def _raw_minute(minute: datetime, pks: set[int]) -> Q:
    return Q(device_id__in=pks, recorded_at__gte=minute, recorded_at__lt=minute + MINUTE)


def window_row(resolution: str, scope: str, key: WindowKey, summary: Summary, devices: int = 1) -> WindowRollup:
    name, bucket, (model_name, model_version) = key
    return WindowRollup(
        resolution=resolution,
        scope=scope,
        key=name,
        model_name=model_name,
        model_version=model_version,
        bucket=bucket,
        devices=devices,
        **summary.totals(),
    )


def summary_of(row: WindowRollup | None) -> Summary:
    summary = Summary()
    if row is not None:
        summary.add_totals(row)
    return summary


def heartbeat_row(
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


def merge_heartbeats(device: Device, hour: datetime, rows: list[HeartbeatRollup]) -> HeartbeatRollup:
    """One hour row over heartbeat rows: counts and sums add up, extremes are the extremes of all."""

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


def upsert_windows(rows: list[WindowRollup]) -> None:
    if rows:
        WindowRollup.objects.bulk_create(
            rows, batch_size=1000, update_conflicts=True, unique_fields=WINDOW_KEY, update_fields=WINDOW_FIELDS
        )


def upsert_heartbeats(rows: list[HeartbeatRollup]) -> None:
    if rows:
        HeartbeatRollup.objects.bulk_create(
            rows,
            batch_size=1000,
            update_conflicts=True,
            unique_fields=["resolution", "device", "bucket"],
            update_fields=HEARTBEAT_FIELDS,
        )

"""Rollup rows rebuilt whole from their sources: the repair path, and the measure of the incremental one.

Device minutes from raw records, device hours from all their minutes, site
and fleet rows from every device row of their buckets (the site each device is
in now). It costs what the touched hours and buckets hold, not what changed:
an hour's end at 10,000 devices reads 600,000 device-minute rows. The
rollup run (``telemetry.rollups``) keeps the same rows up to date from what
changed instead; running this over the same minutes leaves the rows it keeps
as they are (``tests/telemetry/test_rollup_increments.py``).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from datetime import datetime

from django.db import transaction
from django.db.models import Q

from fleet.models import Device
from telemetry import rollup_rows as rows
from telemetry.metrics import Summary
from telemetry.models import HeartbeatRollup, Resolution, Scope, WindowRollup


def rebuild(device_minutes: Iterable[tuple[int, datetime]]) -> None:
    """Rebuild every rollup row that depends on these (device pk, minute) pairs, in one transaction."""
    pairs = set(device_minutes)
    if not pairs:
        return
    with transaction.atomic():
        devices = {d.pk: d for d in Device.objects.filter(pk__in={pk for pk, _ in pairs}).select_related("site")}
        windows, beats = rows.read_minutes(pairs, devices)
        rows.upsert_windows([rows.window_row(Resolution.MINUTE, Scope.DEVICE, k, s) for k, s in windows.items()])
        rows.upsert_heartbeats(list(beats.values()))
        hours = {(pk, rows.floor_to(minute, rows.HOUR)) for pk, minute in pairs}
        _device_hours(hours, devices)
        for resolution, buckets in (
            (Resolution.MINUTE, {m for _, m in pairs}),
            (Resolution.HOUR, {h for _, h in hours}),
        ):
            scopes(resolution, buckets)


def _in_hours(hours: set[tuple[int, datetime]], field: str, key_of: dict[int, object]) -> Iterable[Q]:
    def match(hour: datetime, keys: set[object]) -> Q:
        return Q(**{f"{field}__in": keys, "bucket__gte": hour, "bucket__lt": hour + rows.HOUR})

    return rows.bucket_filters(rows.by_bucket((key_of[pk], hour) for pk, hour in hours), match)


def _device_hours(hours: set[tuple[int, datetime]], devices: dict[int, Device]) -> None:
    keys = {pk: devices[pk].device_id for pk, _ in hours}
    merged: dict[rows.WindowKey, Summary] = defaultdict(Summary)
    minutes = WindowRollup.objects.filter(resolution=Resolution.MINUTE, scope=Scope.DEVICE)
    for clause in _in_hours(hours, "key", dict(keys)):
        for row in minutes.filter(clause):
            merged[(row.key, rows.floor_to(row.bucket, rows.HOUR), (row.model_name, row.model_version))].add_totals(row)
    rows.upsert_windows([rows.window_row(Resolution.HOUR, Scope.DEVICE, k, s) for k, s in merged.items()])
    by_hour: dict[tuple[int, datetime], list[HeartbeatRollup]] = defaultdict(list)
    beats = HeartbeatRollup.objects.filter(resolution=Resolution.MINUTE)
    for clause in _in_hours(hours, "device_id", {pk: pk for pk in keys}):
        for beat in beats.filter(clause):
            by_hour[(beat.device_id, rows.floor_to(beat.bucket, rows.HOUR))].append(beat)
    rows.upsert_heartbeats([rows.merge_heartbeats(devices[pk], hour, found) for (pk, hour), found in by_hour.items()])


def scopes(resolution: str, buckets: set[datetime]) -> None:
    """Rebuild the site and fleet rows of these buckets from all device rows in them."""
    site_of = dict(Device.objects.values_list("device_id", "site__slug"))
    merged: dict[tuple[str, rows.WindowKey], Summary] = defaultdict(Summary)
    contributors: dict[tuple[str, rows.WindowKey], int] = defaultdict(int)
    found = WindowRollup.objects.filter(resolution=resolution, scope=Scope.DEVICE, bucket__in=buckets)
    for row in found.iterator(chunk_size=2000):
        version = (row.model_name, row.model_version)
        for scope, key in ((Scope.SITE, site_of.get(row.key)), (Scope.FLEET, "*")):
            if key is None:
                continue
            merged[(scope, (key, row.bucket, version))].add_totals(row)
            contributors[(scope, (key, row.bucket, version))] += 1
    rows.upsert_windows(
        [
            rows.window_row(resolution, scope, key, summary, devices=contributors[(scope, key)])
            for (scope, key), summary in merged.items()
        ]
    )

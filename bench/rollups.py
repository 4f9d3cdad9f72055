"""One rollup run at fleet size, through the hour: incremental (the task) against a rebuild from sources.

Seeds N devices over S sites and the rollup rows a fleet leaves behind up to
minute k of an hour (one window and one heartbeat per device per minute, so
device, site and fleet rows at both resolutions), then stores minute k's raw
records, one window and one heartbeat per device, and times:

* the rollup task's run over them (``telemetry.rollups.roll_up``: the touched
  minutes rebuilt from raw, every row above them moved by difference), and
* a rebuild of the same minutes from their sources
  (``telemetry.rollup_rebuild.rebuild``: device hours from all their minutes,
  site and fleet rows from every device row of their buckets), which is what
  each run did before the rollups were incremental,

side by side on the same rows, at several points of the hour, and checks the
two leave the same rows.

    .venv/bin/python -m bench.rollups --devices 10000 --sites 100 --at 1,30,58

Needs PostgreSQL (BENCH_DATABASE_URL, default
postgres://postgres@127.0.0.1:5432/edgefleet_bench_rollups, created if missing).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.ingest import setup_django

DEFAULT_DB = "postgres://postgres@127.0.0.1:5432/edgefleet_bench_rollups"
HOUR = datetime(2026, 11, 20, 10, 0, tzinfo=timezone.utc)


def reset(devices: int, sites: int) -> list[Any]:
    """Empty rollup and record tables, and N devices spread over S sites."""
    from django.db import connection

    from fleet.models import Device, Site
    from telemetry.models import Cursor, HeartbeatRollup, TelemetryRecord, WindowRollup

    with connection.cursor() as cursor:
        for model in (TelemetryRecord, WindowRollup, HeartbeatRollup):
            cursor.execute(f"TRUNCATE {model._meta.db_table}")
    Cursor.objects.all().delete()
    Device.objects.filter(site__slug__startswith="bench-r").delete()
    Site.objects.filter(slug__startswith="bench-r").delete()
    places = Site.objects.bulk_create([Site(slug=f"bench-r{i:03d}", name=f"Bench {i}") for i in range(sites)])
    made = Device.objects.bulk_create(
        [
            Device(site=places[i % sites], name=f"bench-r{i}", device_id=f"bench-r{i:05d}", online=True)
            for i in range(devices)
        ]
    )
    with connection.cursor() as cursor:
        for model in (TelemetryRecord, WindowRollup, HeartbeatRollup):
            cursor.execute(f"VACUUM ANALYZE {model._meta.db_table}")
    return list(Device.objects.filter(pk__in=[d.pk for d in made]).select_related("site"))


def window(rng: random.Random, start: datetime) -> dict[str, Any]:
    from agent.kernel import histogram

    frames = 60
    latencies = [rng.lognormvariate(3, 0.3) for _ in range(frames)]
    ok = rng.randrange(frames - 5, frames + 1)
    return {
        "start": start.isoformat(),
        "end": (start + timedelta(seconds=60)).isoformat(),
        "model_name": "detector",
        "model_version": "1.0.0",
        "frames": frames,
        "escalations": frames - ok,
        "latency_ms": histogram.LatencyHistogram.of(latencies).to_wire(),
        "confidence": histogram.confidence_histogram(rng.betavariate(6, 2) for _ in range(frames)),
        "classes": {"ok": ok, "defect": frames - ok},
    }


def heartbeat(rng: random.Random) -> dict[str, Any]:
    return {
        "agent_version": "0.1.0",
        "uptime_s": 600.0,
        "cpu_percent": rng.uniform(10, 90),
        "memory_percent": 40.0,
        "disk_percent": 30.0,
        "disk_free_bytes": 8 * 10**9,
        "temperature_c": rng.uniform(40, 70),
        "cpu_freq_mhz": 1500.0,
        "model_version": "1.0.0",
        "outbox_depth": 0,
    }


def prefill(devices: list[Any], minutes: range, rng: random.Random) -> float:
    """The rows the task leaves behind after these minutes: device minutes, then everything above them."""
    from agent.kernel import protocol
    from telemetry import rollup_rebuild
    from telemetry.metrics import Summary
    from telemetry.models import HeartbeatRollup, Resolution, Scope, WindowRollup
    from telemetry.rollup_rows import heartbeat_row

    started = time.perf_counter()
    shapes = []
    for _ in range(20):
        summary = Summary()
        summary.add_window(
            protocol.window_of(protocol.TelemetryRecord(seq=1, kind="window", ts=HOUR, data=window(rng, HOUR)))
        )
        beat = protocol.heartbeat_of(protocol.TelemetryRecord(seq=1, kind="heartbeat", ts=HOUR, data=heartbeat(rng)))
        shapes.append((summary.totals(), beat))
    windows: list[Any] = []
    beats: list[Any] = []
    for minute in minutes:
        bucket = HOUR + timedelta(minutes=minute)
        for device in devices:
            totals, beat = rng.choice(shapes)
            windows.append(
                WindowRollup(
                    resolution=Resolution.MINUTE,
                    scope=Scope.DEVICE,
                    key=device.device_id,
                    model_name="detector",
                    model_version="1.0.0",
                    bucket=bucket,
                    devices=1,
                    **totals,
                )
            )
            beats.append(heartbeat_row(Resolution.MINUTE, device, bucket, [beat]))
        if len(windows) >= 20_000 or minute == minutes[-1]:
            WindowRollup.objects.bulk_create(windows, batch_size=5000)
            HeartbeatRollup.objects.bulk_create(beats, batch_size=5000)
            windows, beats = [], []
    rollup_rebuild.rebuild((d.pk, HOUR + timedelta(minutes=m)) for d in devices for m in minutes)
    return time.perf_counter() - started


def store_minute(devices: list[Any], minute: int, rng: random.Random) -> datetime:
    """Minute k's raw records, as the bridge stores them; returns the time just before they were received."""
    from django.utils import timezone as dj_timezone

    from telemetry.models import TelemetryRecord

    before = dj_timezone.now()
    start = HOUR + timedelta(minutes=minute) - timedelta(seconds=30)
    records = []
    for device in devices:
        end = start + timedelta(seconds=60)
        records.append(
            TelemetryRecord(device=device, seq=2 * minute + 1, kind="window", recorded_at=end, data=window(rng, start))
        )
        at = HOUR + timedelta(minutes=minute, seconds=15)
        records.append(
            TelemetryRecord(device=device, seq=2 * minute + 2, kind="heartbeat", recorded_at=at, data=heartbeat(rng))
        )
    TelemetryRecord.objects.bulk_create(records, batch_size=5000)
    return before


def hour_rows() -> dict[tuple[Any, ...], tuple[Any, ...]]:
    from telemetry.models import HeartbeatRollup, WindowRollup

    windows = WindowRollup.objects.filter(resolution="1h").values_list(
        "scope", "key", "bucket", "devices", "windows", "frames", "escalations", "latency", "confidence", "classes"
    )
    beats = HeartbeatRollup.objects.filter(resolution="1h").values_list("device_id", "heartbeats", "cpu_percent_max")
    rows: dict[tuple[Any, ...], tuple[Any, ...]] = {("w", *r[:3]): r[3:] for r in windows}
    rows.update({("h", r[0]): r[1:] for r in beats})
    return rows


def measure(devices: list[Any], minute: int, rng: random.Random) -> dict[str, Any]:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext
    from django.utils import timezone as dj_timezone

    from telemetry import rollup_rebuild, rollups
    from telemetry.models import Cursor
    from telemetry.rollup_rows import MINUTE, floor_to

    before = store_minute(devices, minute, rng)
    Cursor.objects.update_or_create(name=rollups.CURSOR, defaults={"position": before - timedelta(microseconds=1)})
    with CaptureQueriesContext(connection) as incremental_queries:
        started = time.perf_counter()
        result = rollups.roll_up(now=dj_timezone.now() + rollups.SETTLE + timedelta(seconds=1))
        incremental = time.perf_counter() - started
    kept = hour_rows()
    pairs = {(d.pk, floor_to(HOUR + timedelta(minutes=minute, seconds=15), MINUTE)) for d in devices}
    with CaptureQueriesContext(connection) as rebuild_queries:
        started = time.perf_counter()
        rollup_rebuild.rebuild(pairs)
        rebuild = time.perf_counter() - started
    same = kept == hour_rows()
    return {
        "minute": minute,
        "records": result.records,
        "device_minutes": result.device_minutes,
        "incremental_s": round(incremental, 2),
        "rebuild_s": round(rebuild, 2),
        "ratio": round(rebuild / incremental, 1),
        "incremental_queries": len(incremental_queries),
        "rebuild_queries": len(rebuild_queries),
        "incremental_records_per_s": round(result.records / incremental),
        "same_rows": same,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--sites", type=int, default=100)
    parser.add_argument("--at", default="1,30,58", help="minutes of the hour to measure a run at, increasing")
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args()
    points = sorted({int(m) for m in args.at.split(",")})
    if not points or points[0] < 1 or points[-1] > 59:
        parser.error("--at takes minutes 1 to 59")
    setup_django(os.environ.get("BENCH_DATABASE_URL", DEFAULT_DB))
    rng = random.Random(5)  # noqa: S311 - synthetic data, not secrets
    devices = reset(args.devices, args.sites)
    print(f"{args.devices} devices over {args.sites} sites; one window and one heartbeat per device per minute")
    results = []
    filled = 0
    for minute in points:
        seeded = prefill(devices, range(filled, minute), rng) if minute > filled else 0.0
        print(f"  rows of minutes {filled}-{minute - 1} seeded in {seeded:.0f} s")
        result = measure(devices, minute, rng)
        filled = minute + 1
        results.append(result)
        print(
            f"minute {minute:2d}: {result['records']} records, {result['device_minutes']} device-minutes: "
            f"incremental {result['incremental_s']} s ({result['incremental_queries']} queries, "
            f"{result['incremental_records_per_s']} records/s), rebuild {result['rebuild_s']} s "
            f"({result['rebuild_queries']} queries): rebuild / incremental = {result['ratio']}x; "
            f"same hour rows: {result['same_rows']}",
            flush=True,
        )
    if args.json:
        args.json.write_text(json.dumps({"devices": args.devices, "sites": args.sites, "runs": results}, indent=2))


if __name__ == "__main__":
    main()

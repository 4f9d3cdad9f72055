"""Dashboard time-series query: one site over 7 days at 1,000 devices, server time and query count.

Seeds a week of hourly rollups for N devices of one site (what the rollup
task leaves behind), builds the site rows whole from them (timed: the
rollup rebuild's cost at this size), then asks the API for the
site's 7-day series as the dashboard does, several times, and reports the
median server time and the number of SQL queries per request.

    .venv/bin/python -m bench.query_series --devices 1000 --days 7

Needs PostgreSQL (BENCH_DATABASE_URL, default
postgres://postgres@127.0.0.1:5432/edgefleet_bench_telemetry, created if missing).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.ingest import DEFAULT_DB, setup_django


def seed(devices: int, days: int) -> tuple[str, datetime, datetime, float]:
    from agent.kernel import histogram
    from fleet.models import Device, Site
    from telemetry import rollup_rebuild
    from telemetry.models import Resolution, Scope, WindowRollup

    site, _ = Site.objects.get_or_create(slug="bench-dashboard", defaults={"name": "Bench dashboard"})
    keys = [f"benchq-{i:05d}" for i in range(devices)]
    WindowRollup.objects.filter(key__in=[*keys, site.slug]).delete()
    Device.objects.filter(site=site).delete()
    Device.objects.bulk_create([Device(site=site, name=k, device_id=k) for k in keys])
    end = datetime.now(timezone.utc).replace(minute=0, second=0, microsecond=0)
    start = end - timedelta(days=days)
    rng = random.Random(3)  # noqa: S311 - synthetic data, not secrets
    # A handful of realistic hour shapes reused across devices keeps seeding fast.
    shapes = []
    for _ in range(20):
        frames = 360 * 30
        shapes.append(
            {
                "frames": frames,
                "windows": 360,
                "errors": rng.randrange(3),
                "escalations": rng.randrange(300),
                "dropped_frames": rng.randrange(20),
                "latency": histogram.LatencyHistogram.of(rng.lognormvariate(3, 0.3) for _ in range(500)).to_wire(),
                "confidence": histogram.confidence_histogram(rng.betavariate(6, 2) for _ in range(frames // 20)),
                "classes": {"ok": frames - 500, "defect": 500},
            }
        )
    hours = [start + timedelta(hours=h) for h in range(days * 24)]
    batch: list[WindowRollup] = []
    for key in keys:
        for hour in hours:
            batch.append(
                WindowRollup(
                    resolution=Resolution.HOUR,
                    scope=Scope.DEVICE,
                    key=key,
                    model_name="detector",
                    model_version="1.0.0",
                    bucket=hour,
                    devices=1,
                    **rng.choice(shapes),
                )
            )
            if len(batch) >= 5000:
                WindowRollup.objects.bulk_create(batch)
                batch = []
    WindowRollup.objects.bulk_create(batch)
    t0 = time.perf_counter()
    rollup_rebuild.scopes(Resolution.HOUR, set(hours))
    per_hour = (time.perf_counter() - t0) / len(hours)
    return site.slug, start, end, per_hour


def measure(slug: str, start: datetime, end: datetime, repeats: int) -> dict[str, float]:
    from django.contrib.auth import get_user_model
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    user, _ = get_user_model().objects.get_or_create(username="bench-viewer")
    client = Client()
    client.force_login(user)
    params = {"scope": "site", "key": slug, "start": start.isoformat(), "end": end.isoformat()}
    timings, queries, points = [], 0, 0
    for _ in range(repeats):
        with CaptureQueriesContext(connection) as captured:
            t0 = time.perf_counter()
            response = client.get("/api/v1/telemetry/", params)
            timings.append((time.perf_counter() - t0) * 1000)
        assert response.status_code == 200, response.content[:300]
        queries = len(captured)
        points = len(response.json()["points"])
    return {
        "server_ms_median": statistics.median(timings),
        "server_ms_max": max(timings),
        "queries": queries,
        "points": points,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    os.environ.setdefault("ALLOWED_HOSTS", "testserver")
    setup_django(os.environ.get("BENCH_DATABASE_URL", DEFAULT_DB))
    t0 = time.perf_counter()
    slug, start, end, per_hour = seed(args.devices, args.days)
    seeded = time.perf_counter() - t0
    result = {
        "devices": args.devices,
        "days": args.days,
        "device_hour_rows": args.devices * args.days * 24,
        "seed_s": round(seeded, 1),
        "site_rollup_ms_per_hour": round(per_hour * 1000, 1),
        **measure(slug, start, end, args.repeats),
    }
    result["server_ms_median"] = round(result["server_ms_median"], 1)
    result["server_ms_max"] = round(result["server_ms_max"], 1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()

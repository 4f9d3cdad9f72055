"""The rollout scheduler's tick at fleet sizes: time and SQL queries of each kind of tick.

Seeds N devices directly in the database (on 1.0.0 of a small classifier,
reporting active), publishes 2.0.0, creates a one-stage rollout to all of
them, and times the ticks that matter: the one that sends the stage (every
device's signed desired document), one that watches it after every device
reported active, and an idle one. Queries are counted with Django's
``CaptureQueriesContext``.

    .venv/bin/python -m bench.rollout_tick --devices 100 1000 10000

Needs PostgreSQL (BENCH_DATABASE_URL, default
postgres://postgres@127.0.0.1:5432/edgefleet_bench_rollouts, created if missing).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import timedelta
from typing import Any

from bench.ingest import setup_django

DEFAULT_DB = "postgres://postgres@127.0.0.1:5432/edgefleet_bench_rollouts"


def publish(version: str, seed: int) -> Any:
    from registry.metadata import parse_metadata
    from registry.models import ModelVersion
    from registry.services import publish_version
    from tests.registry.conftest import make_classifier, make_png_images, metadata_for

    metadata = parse_metadata(json.dumps(metadata_for(version)))
    publish_version(
        model_name="parts",
        model_bytes=make_classifier(seed=seed),
        metadata=metadata,
        images=make_png_images(),
        actor=None,
    )
    return ModelVersion.objects.get(model__name="parts", version=version)


def seed(count: int) -> tuple[Any, Any]:
    from django.db import connection
    from django.utils import timezone

    from fleet.models import Device, Site

    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE rollouts_rolloutdevice, rollouts_rolloutstage, rollouts_gateresult CASCADE")
        cursor.execute("TRUNCATE rollouts_rollout CASCADE")
        cursor.execute("TRUNCATE fleet_device CASCADE")
        cursor.execute("TRUNCATE fleet_site CASCADE")
        # A key left by an earlier run has its private half in that run's temporary folder.
        cursor.execute("TRUNCATE registry_model, registry_signingkey CASCADE")
    v1, v2 = publish("1.0.0", 7), publish("2.0.0", 8)
    sites = Site.objects.bulk_create([Site(slug=f"site-{i:03d}", name=f"Site {i}") for i in range(max(1, count // 50))])
    now = timezone.now()
    reported = {"generation": 1, "model_name": "parts", "model_version": "1.0.0", "phase": "active"}
    Device.objects.bulk_create(
        [
            Device(
                device_id=f"dev-{i:016x}",
                site=sites[i % len(sites)],
                name=f"cam-{i}",
                agent_version="0.1.0",
                online=True,
                last_seen=now,
                reported=reported,
                desired_generation=1,
                published_generation=1,
            )
            for i in range(count)
        ],
        batch_size=2000,
    )
    return v1, v2


def timed_tick(now: Any) -> tuple[float, int]:
    from django.db import connection

    from rollouts import scheduler

    count = 0

    def counting(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        nonlocal count
        count += 1
        return execute(sql, params, many, context)

    with connection.execute_wrapper(counting):
        started = time.perf_counter()
        scheduler.tick(now=now)
        elapsed = time.perf_counter() - started
    return elapsed, count


def measure(count: int) -> dict[str, Any]:
    from django.utils import timezone

    from fleet.models import Device
    from rollouts import services
    from rollouts.models import RolloutDevice

    _, v2 = seed(count)
    rollout = services.create(
        version=v2,
        target={"running_model": "parts"},
        plan={"stages": [{"kind": "percent", "value": 100}]},
        gates={"soak_s": 60},
        actor="bench",
    )
    now = timezone.now()
    # The stage goes out ROLLOUT_SEND_CHUNK devices a tick, one tick every 15 s as the beat runs it.
    sends: list[tuple[float, int]] = []
    while rollout.devices.filter(state=RolloutDevice.PENDING).exists():
        sends.append(timed_tick(now + timedelta(seconds=15 * len(sends))))
    assert rollout.devices.filter(state=RolloutDevice.ASSIGNED).count() == count, "the stage was not sent"
    now += timedelta(seconds=15 * len(sends))
    # Every device answers: it applied its new generation and runs 2.0.0.
    devices = list(Device.objects.all())
    for device in devices:
        device.reported = {
            "generation": device.desired_generation,
            "model_name": "parts",
            "model_version": "2.0.0",
            "phase": "active",
        }
    Device.objects.bulk_update(devices, ["reported"], batch_size=2000)
    watch_s, watch_q = timed_tick(now + timedelta(seconds=30))
    idle_s, idle_q = timed_tick(now + timedelta(seconds=45))
    return {
        "devices": count,
        "send_ticks": len(sends),
        "send_tick_max_s": round(max(t for t, _ in sends), 3),
        "send_tick_queries_max": max(q for _, q in sends),
        "send_s_total": round(sum(t for t, _ in sends), 3),
        "watch_tick_s": round(watch_s, 3),
        "watch_tick_queries": watch_q,
        "idle_tick_s": round(idle_s, 4),
        "idle_tick_queries": idle_q,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, nargs="+", default=[100, 1000, 10000])
    args = parser.parse_args(argv)
    setup_django(os.environ.get("BENCH_DATABASE_URL", DEFAULT_DB))
    for count in args.devices:
        print(json.dumps(measure(count)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

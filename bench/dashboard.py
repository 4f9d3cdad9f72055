"""The dashboard's pages at fleet size: server time, SQL queries and HTML bytes.

Seeds 300 sites and 10,000 devices directly in the database (bulk_create:
half of them reporting detector 1.0.0, the rest 1.1.0 or 2.0.0, one in eight
offline, one in 47 with an open alert, a running rollout on a tenth of the
sites) and renders, as a staff user through Django's test Client, the
overview (page 1), a filtered and sorted overview, the device search and one
site page. Each page is rendered 5 times; the median is printed, with the
queries and bytes of one render.

    .venv/bin/python -m bench.dashboard

Needs PostgreSQL (BENCH_DATABASE_URL, default
postgres://postgres@127.0.0.1:5432/edgefleet_bench_dashboard, created if missing).
"""

from __future__ import annotations

import os
import re
import statistics
import time
from typing import Any

from bench.ingest import setup_django

DEFAULT_DB = "postgres://postgres@127.0.0.1:5432/edgefleet_bench_dashboard"
SITES, DEVICES, RENDERS = 300, 10_000, 5
# The first BIG_SITE devices are at site-000; the rest go round the other sites (about 30 each).
BIG_SITE = 1_000
PAGES = {
    "overview, page 1": "/",
    "overview, filtered (open alerts, sorted by them)": "/?alerts=on&sort=-alerts",
    "overview, by model version": "/?version=detector%402.0.0",
    "device search (page 1 of matches)": "/devices/?q=cam-1",
    "site page (30 devices)": "/sites/site-150/",
    "site page (1,000 devices, page 1 of 10)": "/sites/site-000/",
    "device page": f"/devices/dev-{DEVICES - 1:016x}/",
    "escalation review queue": "/escalations/",
    "rollouts": "/rollouts/",
    "models": "/models/",
    "audit log": "/audit/",
}


def seed() -> None:
    from django.db import connection
    from django.utils import timezone

    from fleet.models import Device, Site
    from registry.models import Model, ModelVersion
    from rollouts.models import Rollout, RolloutDevice
    from telemetry import alerts
    from telemetry.models import Alert, AlertRule

    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE rollouts_rollout, telemetry_alert, fleet_device, fleet_site, registry_model CASCADE")
    sites = Site.objects.bulk_create([Site(slug=f"site-{i:03d}", name=f"Site {i:03d}") for i in range(SITES)])
    now = timezone.now()

    def reported(i: int) -> dict[str, Any]:
        version = "1.0.0" if i % 2 else ("1.1.0" if i % 4 else "2.0.0")
        return {"model_name": "detector", "model_version": version, "phase": "active", "generation": 1}

    devices = Device.objects.bulk_create(
        [
            Device(
                device_id=f"dev-{i:016x}",
                site=sites[0] if i < BIG_SITE else sites[1 + i % (SITES - 1)],
                name=f"cam-{i}",
                online=i % 8 != 0,
                last_seen=now,
                reported=reported(i),
                last_heartbeat={"temperature_c": 40.0 + i % 30, "cpu_percent": i % 100},
            )
            for i in range(DEVICES)
        ],
        batch_size=2000,
    )
    alerts.ensure_rules()
    rule = AlertRule.objects.get(kind="temperature_high")
    Alert.objects.bulk_create(
        [Alert(rule=rule, device=d, since=now, opened_at=now, state=Alert.State.OPEN) for d in devices[::47]]
    )
    model = Model.objects.create(name="detector", task="detection")
    version = ModelVersion.objects.create(
        model=model, version="2.0.0", sequence=3, content_digest="0" * 64, input_spec={}, output={}, labels=["a"]
    )
    rollout = Rollout.objects.create(version=version, target={}, plan={}, state=Rollout.RUNNING)
    at_rollout_sites = {s.pk for s in sites[::10]}
    RolloutDevice.objects.bulk_create(
        [
            RolloutDevice(rollout=rollout, device=d, stage_index=0, target="cpu-fp32")
            for d in devices
            if d.site_id in at_rollout_sites
        ],
        batch_size=2000,
    )
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")


def assets(html: str) -> int:
    """Bytes of the static scripts and stylesheets the page loads (what a first visit downloads besides the HTML)."""
    from django.conf import settings
    from django.contrib.staticfiles import finders

    total = 0
    for path in set(re.findall(rf'(?:src|href)="{re.escape(settings.STATIC_URL)}([^"?]+\.(?:js|css))"', html)):
        found = finders.find(path)
        total += os.path.getsize(found) if isinstance(found, str) else 0
    return total


def measure(client: Any, path: str) -> tuple[float, int, int, int]:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    times = []
    for _ in range(RENDERS):
        start = time.perf_counter()
        response = client.get(path)
        times.append(time.perf_counter() - start)
        assert response.status_code == 200, (path, response.status_code)
    with CaptureQueriesContext(connection) as queries:
        response = client.get(path)
    html = response.content.decode()
    return statistics.median(times), len(queries), len(response.content), assets(html)


def main() -> None:
    setup_django(os.environ.get("BENCH_DATABASE_URL", DEFAULT_DB))
    from django.contrib.auth import get_user_model
    from django.test import Client
    from django.test.utils import override_settings, setup_test_environment

    setup_test_environment()
    seed()
    staff, _ = get_user_model().objects.get_or_create(username="bench-staff", defaults={"is_staff": True})
    client = Client()
    client.force_login(staff)
    print(f"{SITES} sites, {DEVICES} devices; median of {RENDERS} renders\n")
    print("| page | server time | queries | HTML bytes | scripts and CSS (uncompressed) |")
    print("| --- | --- | --- | --- | --- |")
    from rollouts.models import Rollout

    running = Rollout.objects.get()
    pages = {**PAGES, f"rollout page ({running.devices.count():,} devices, page 1)": f"/rollouts/{running.pk}/"}
    with override_settings(ALLOWED_HOSTS=["testserver"]):
        for label, path in pages.items():
            seconds, queries, size, static = measure(client, path)
            print(f"| {label} `{path}` | {seconds * 1000:.0f} ms | {queries} | {size:,} | {static:,} |")


if __name__ == "__main__":
    main()

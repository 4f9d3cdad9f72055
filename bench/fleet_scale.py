"""Ten thousand simulated devices through one Mosquitto to one control plane, on this machine.

The control plane is the production topology (``tests/stack.py``: gunicorn, the
bridge, a prefork Celery worker and beat, from deploy/compose's commands, on
PostgreSQL, Redis and a private Mosquitto with dynamic security). One
``edgefleet-sim run`` process enrolls every device over the REST API (each
gets its own broker account) and runs them on the real protocol. CI publishes
the classifier twice with ``edgefleet publish``. Then, in order:

* **enrollment**: devices enrolled per second, and the time until every one is
  online in the control plane;
* **steady state** for each ``--interval`` (seconds between a device's windows
  and heartbeats), once the connection burst's backlog has drained (the
  newest records stored within a second; how long that took is printed):
  telemetry records stored per second against what the fleet
  offers, ingest lag (the record's time on the device to ``received_at``, p50/p95/p99), CPU
  share of each process (cores), resident memory of each process; the fleet
  overview page's server time and query count, rendered while the fleet runs;
* **a staged rollout to every device** (1 %, 10 %, 100 %, short soaks): the time
  from its start to every device active on the new version, under the
  simulator's uplink model.

One JSON line per phase, then a summary naming the busiest process: where the
fleet breaks first on this machine.

    .venv/bin/python -m bench.fleet_scale --devices 10000 --intervals 10 5 --steady 90

The database, broker and processes are made for the run and removed after it
(``--keep`` leaves the working folder with every process's log).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import psycopg

from demo import scene
from tests.stack import BIN, Stack, missing_services, production_stack
from zoo import faults, samples

MODEL = scene.MODEL
PLAN = {
    "stages": [{"kind": "percent", "value": 1}, {"kind": "percent", "value": 10}, {"kind": "percent", "value": 100}]
}
# Short soaks: the figure measured is how fast the system moves 10,000 devices, not a production soak.
GATES = {
    "soak_s": 60,
    "max_soak_extensions": 2,
    "activation_timeout_s": 900,
    "max_silent_pct": 1.0,
    "max_p95_latency_regression": 0.5,
}
SITE_SIZE = 100
REDIS_URL = "redis://127.0.0.1:6379/12"


def scenario(devices: int, interval: float, uplink_kbps: int) -> str:
    """A TOML scenario: sites of ``SITE_SIZE`` devices, two hardware profiles, one model version running."""
    sites, rest = divmod(devices, SITE_SIZE)
    lines = [
        'name = "fleet-scale"',
        "seed = 5",
        "duration_s = 86400",
        f"window_s = {interval}",
        f"heartbeat_s = {interval}",
        "",
        "[model]",
        f'name = "{MODEL}"',
        'version = "1.0.0"',
        "bundle_bytes = 4_000_000",
        "escalation_upload_share = 0",
        "",
        "[hardware.jetson-orin]",
        "fps = 4",
        "latency_ms = { median = 9.0, spread = 0.2 }",
        "",
        "[hardware.rpi5]",
        "fps = 2",
        "latency_ms = { median = 38.0, spread = 0.3 }",
        "",
    ]
    for name, count, size in (("plant", sites, SITE_SIZE), ("extra", 1 if rest else 0, rest)):
        if count:
            lines += [
                "[[sites]]",
                f'name = "{name}"',
                f"count = {count}",
                f"devices = {size}",
                f"uplink_kbps = {uplink_kbps}",
                "hardware = { jetson-orin = 3, rpi5 = 1 }",
                "",
            ]
    return "\n".join(lines)


# --- the processes ---------------------------------------------------------------------------


def processes(stack: Stack, sim: subprocess.Popen[bytes] | None) -> dict[str, list[psutil.Process]]:
    """Every process of the run by part: each control-plane process with its children, the broker,
    PostgreSQL's backends serving this run's database, the simulator."""
    parts: dict[str, list[psutil.Process]] = {}
    for name, process in stack.processes.items():
        root = psutil.Process(process.pid)
        parts[name] = [root, *root.children(recursive=True)]
    parts["mosquitto"] = [
        p
        for p in psutil.process_iter(["name", "cmdline"])
        if p.info["name"] == "mosquitto" and str(stack.root) in " ".join(p.info["cmdline"] or [])
    ]
    parts["postgresql"] = [
        p
        for p in psutil.process_iter(["name", "cmdline"])
        if p.info["name"] == "postgres" and stack.database in " ".join(p.info["cmdline"] or [])
    ]
    if sim is not None:
        parts["simulator"] = [psutil.Process(sim.pid)]
    return parts


def cpu_seconds(parts: dict[str, list[psutil.Process]]) -> dict[str, dict[int, float]]:
    """CPU seconds of each process, by part and pid."""
    totals: dict[str, dict[int, float]] = {}
    for name, members in parts.items():
        totals[name] = {}
        for process in members:
            with contextlib.suppress(psutil.NoSuchProcess):
                times = process.cpu_times()
                totals[name][process.pid] = times.user + times.system
    return totals


def rss_mib(parts: dict[str, list[psutil.Process]]) -> dict[str, float]:
    totals = {}
    for name, members in parts.items():
        total = 0
        for process in members:
            with contextlib.suppress(psutil.NoSuchProcess):
                total += process.memory_info().rss
        totals[name] = round(total / 2**20, 1)
    return totals


@contextlib.contextmanager
def cpu_window(stack: Stack, sim: subprocess.Popen[bytes] | None) -> Iterator[dict[str, Any]]:
    """CPU cores each part used while the block ran, filled in on exit."""
    parts = processes(stack, sim)
    before, start = cpu_seconds(parts), time.monotonic()
    figures: dict[str, Any] = {}
    yield figures
    parts_after = processes(stack, sim)
    after, wall = cpu_seconds(parts_after), time.monotonic() - start
    # Per process: what it used since the start (or since it began). A backend or pool child that ended in
    # between took its CPU time with it, so the figure is a floor.
    figures["cores"] = {
        name: round(sum(t - before.get(name, {}).get(pid, 0.0) for pid, t in pids.items()) / wall, 2)
        for name, pids in after.items()
    }
    figures["machine_cores_busy"] = round(sum(figures["cores"].values()), 2)
    # Anything else running on the machine takes its cores too: the load average says how quiet it was.
    figures["load_average_1m"] = round(os.getloadavg()[0], 1)
    figures["rss_mib"] = rss_mib(parts_after)


# --- the database ----------------------------------------------------------------------------


class Database:
    def __init__(self, url: str) -> None:
        self.conn = psycopg.connect(url, autocommit=True)

    def one(self, sql: str, *args: Any) -> Any:
        row = self.conn.execute(sql, args).fetchone()
        return row[0] if row else None

    def online(self) -> int:
        return int(self.one("SELECT count(*) FROM fleet_device WHERE online AND revoked_at IS NULL"))

    def active_on(self, version: str) -> int:
        return int(
            self.one(
                "SELECT count(*) FROM fleet_device "
                "WHERE reported->>'model_version' = %s AND reported->>'phase' = 'active'",
                version,
            )
        )

    def recent_lag_p50_s(self) -> float:
        """Median lag of the records stored in the last 10 s (infinite before any)."""
        value = self.one(
            "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM received_at - recorded_at)) "
            "FROM telemetry_telemetryrecord WHERE received_at >= now() - interval '10 seconds'"
        )
        return float(value) if value is not None else float("inf")

    def enrollment_span_s(self) -> float:
        """Seconds from the first device's enrollment to the last one's."""
        return float(self.one("SELECT extract(epoch FROM max(created_at) - min(created_at)) FROM fleet_device") or 0)

    def stages(self, rollout: int) -> list[dict[str, Any]]:
        """Each stage's devices, seconds from its start to all of them active, and its soak extensions."""
        rows = self.conn.execute(
            "SELECT s.index, count(d.id), extract(epoch FROM s.all_active_at - s.started_at), s.soak_extensions "
            "FROM rollouts_rolloutstage s LEFT JOIN rollouts_rolloutdevice d "
            "ON d.rollout_id = s.rollout_id AND d.stage_index = s.index "
            "WHERE s.rollout_id = %s GROUP BY s.id ORDER BY s.index",
            [rollout],
        ).fetchall()
        return [
            {"devices": n, "seconds_to_active": round(float(t)) if t is not None else None, "extensions": e}
            for _, n, t, e in rows
        ]

    def rollups_behind_s(self) -> float | None:
        """How far the rollup cursor is behind now: records received since then are not rolled up yet."""
        value = self.one("SELECT extract(epoch FROM now() - position) FROM telemetry_cursor WHERE name = 'rollups'")
        return round(float(value)) if value is not None else None

    def records(self) -> int:
        return int(self.one("SELECT count(*) FROM telemetry_telemetryrecord"))

    def lag(self, since: float) -> dict[str, float]:
        row = self.conn.execute(
            "SELECT percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP "
            "(ORDER BY extract(epoch FROM received_at - recorded_at)), count(*) "
            # Records made during the measurement: a late device's backlog is not steady-state lag.
            "FROM telemetry_telemetryrecord WHERE received_at >= to_timestamp(%s) AND recorded_at >= to_timestamp(%s)",
            [since, since],
        ).fetchone()
        (p50, p95, p99), count = row if row and row[0] else ((0.0, 0.0, 0.0), 0)
        return {
            "lag_p50_ms": round(p50 * 1000),
            "lag_p95_ms": round(p95 * 1000),
            "lag_p99_ms": round(p99 * 1000),
            "records": count,
        }


def wait_until(condition: Callable[[], bool], timeout: float, what: str, every: float = 1.0) -> float:
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            raise SystemExit(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(every)
    return time.monotonic() - start


def say(phase: str, **figures: Any) -> None:
    print(json.dumps({"phase": phase, **figures}), flush=True)


# --- the phases ------------------------------------------------------------------------------


def publish(stack: Stack, work: Path) -> None:
    """The classifier as CI publishes it: 1.0.0 (what the fleet runs) and 1.1.0 (the same answers, re-exported)."""
    metadata = json.loads(scene.MODEL_METADATA.read_text())
    metadata.pop("reference_distribution", None)
    references = samples.write_samples(work / "reference", samples.reference_crops(4))
    for version, model in (("1.0.0", scene.MODEL_FILE.read_bytes()), ("1.1.0", faults.good("1.1.0"))):
        (work / f"{version}.onnx").write_bytes(model)
        (work / f"{version}.json").write_text(json.dumps({**metadata, "version": version}))
        scene.publish(
            BIN, stack.web, stack.api_token, MODEL, work / f"{version}.onnx", work / f"{version}.json", references
        )


def start_simulator(
    stack: Stack, work: Path, devices: int, interval: float, uplink_kbps: int
) -> subprocess.Popen[bytes]:
    path = work / f"scenario-{interval:g}.toml"
    path.write_text(scenario(devices, interval, uplink_kbps))
    log = (stack.root / f"simulator-{interval:g}.log").open("ab")
    command = [
        str(BIN / "edgefleet-sim"), "run", str(path), "--server", stack.web, "--api-token", stack.api_token,
        "--state", str(work / "identities.json"), "--no-uploads", "--json",
    ]  # fmt: skip
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)


def stop(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGINT)
    try:
        process.wait(60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def overview(stack: Stack) -> dict[str, Any]:
    """The fleet overview rendered in this process against the running fleet's database: server time, queries."""
    from bench.dashboard import measure
    from bench.ingest import setup_django

    if "DJANGO_SETTINGS_MODULE" not in os.environ or not _django_ready():
        setup_django(stack.database_url)
    from django.contrib.auth import get_user_model
    from django.test import Client
    from django.test.utils import override_settings

    client = Client()
    client.force_login(get_user_model().objects.get(username="ops"))
    with override_settings(ALLOWED_HOSTS=["testserver"]):
        seconds, queries, size, _ = measure(client, "/")
    return {"overview_ms": round(seconds * 1000), "overview_queries": queries, "overview_bytes": size}


def _django_ready() -> bool:
    from django.apps import apps

    return apps.ready


def steady(
    stack: Stack, db: Database, sim: subprocess.Popen[bytes], devices: int, interval: float, seconds: float
) -> dict[str, Any]:
    # The connection burst's backlog (every device's presence, report and first records at once) drains
    # before the measurement: until the newest records are stored within a second of being made.
    time.sleep(max(30.0, 2 * interval))
    start = time.monotonic()
    wait_until(lambda: db.recent_lag_p50_s() < 1.0, 1800, "the connection burst's backlog to drain", every=5.0)
    drained_after = round(time.monotonic() - start + max(30.0, 2 * interval))
    records0, since = db.records(), time.time()
    behind: list[float] = []
    with cpu_window(stack, sim) as cpu:
        until = time.monotonic() + seconds
        while (left := until - time.monotonic()) > 0:
            time.sleep(min(5.0, left))
            if (lag := db.rollups_behind_s()) is not None:
                behind.append(lag)
    stored = db.records() - records0
    # Each device sends a window and a heartbeat every interval: two records.
    offered = 2 * devices / interval
    figures = {
        "devices": devices,
        "interval_s": interval,
        "backlog_drained_after_s": drained_after,
        "offered_records_per_s": round(offered),
        "stored_records_per_s": round(stored / seconds),
        **db.lag(since),
        # The rollup task runs every 15 s here and reads up to 10 s ago: 25 s behind is keeping up.
        "rollups_behind_s_max": max(behind, default=None),
        **cpu,
    }
    figures.update(overview(stack))
    return figures


def rollout(stack: Stack, db: Database, sim: subprocess.Popen[bytes], devices: int) -> dict[str, Any]:
    status, started = stack.api(
        "/api/v1/rollouts/",
        {
            "model": MODEL,
            "version": "1.1.0",
            "plan": PLAN,
            "target": {"running_model": MODEL},
            "gates": GATES,
            "reason": "fleet-scale bench",
        },
        timeout=120,
    )
    if status != 201:
        raise SystemExit(f"the rollout was refused: {status} {started}")
    start = time.monotonic()
    all_active_s: float | None = None
    behind: list[float] = []
    with cpu_window(stack, sim) as cpu:
        while True:
            if (lag := db.rollups_behind_s()) is not None:
                behind.append(lag)
            if all_active_s is None and db.active_on("1.1.0") >= devices:
                all_active_s = time.monotonic() - start
            status, answer = stack.api(f"/api/v1/rollouts/{started['id']}/", timeout=60)
            if status == 200 and answer["state"] in ("completed", "halted", "reverted", "aborted"):
                break
            if time.monotonic() - start > 3600:
                raise SystemExit("the rollout did not end within an hour")
            time.sleep(2)
    return {
        "state": answer["state"],
        "halt_reason": answer.get("halt_reason") or "",
        "devices": devices,
        "active_on_new_version": db.active_on("1.1.0"),
        "seconds_to_all_active": round(all_active_s) if all_active_s is not None else None,
        "seconds_to_completed": round(time.monotonic() - start),
        "stages": db.stages(started["id"]),
        "soak_s": GATES["soak_s"],
        "rollups_behind_s_max": max(behind, default=None),
        **cpu,
    }


def run(args: argparse.Namespace, root: Path) -> None:
    # As an operator provisioning a fleet raises the enrollment rate; rollups and the rollout tick run at
    # the demo's pace, so a stage's minute of windows is rolled up within its soak.
    env = {
        "ENROLL_THROTTLE_RATE": "1000000/minute",
        "LOG_LEVEL": "WARNING",
        "TELEMETRY_ROLLUP_INTERVAL_S": "15",
        "ROLLOUT_TICK_INTERVAL_S": "5",
    }
    with production_stack(
        root, env=env, gunicorn_workers=args.web_workers, broker_auth=args.broker_auth, redis_url=REDIS_URL
    ) as stack:
        stack.wait_ready(timeout=300)
        work = root / "work"
        work.mkdir()
        publish(stack, work)
        db = Database(stack.database_url)
        for index, interval in enumerate(args.intervals):
            sim = start_simulator(stack, work, args.devices, interval, args.uplink_kbps)
            try:
                started = time.monotonic()
                with cpu_window(stack, sim) as cpu:
                    took = wait_until(
                        lambda: db.online() >= args.devices, args.devices / 5 + 300, "every device online"
                    )
                if index == 0:
                    span = db.enrollment_span_s()
                    say("enrollment", devices=args.devices, seconds_to_all_online=round(took),
                        enrolled_per_s=round(args.devices / max(span, 1e-3), 1), **cpu)  # fmt: skip
                else:
                    say("reconnect", devices=args.devices, seconds_to_all_online=round(time.monotonic() - started))
                say("steady", **steady(stack, db, sim, args.devices, interval, args.steady))
                if index == 0 and args.rollout:
                    say("rollout", **rollout(stack, db, sim, args.devices))
            finally:
                stop(sim)
            print(stack.log(f"simulator-{interval:g}", 400).strip().splitlines()[-1:], file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--intervals", type=float, nargs="+", default=[10.0], help="seconds between windows")
    parser.add_argument("--steady", type=float, default=90.0, help="seconds of steady state measured per interval")
    parser.add_argument("--uplink-kbps", type=int, default=50_000, help="each site's uplink (100 devices share it)")
    parser.add_argument("--web-workers", type=int, default=2)
    parser.add_argument("--no-rollout", dest="rollout", action="store_false")
    parser.add_argument(
        "--no-broker-auth",
        dest="broker_auth",
        action="store_false",
        help="Mosquitto without dynamic security (every enrollment there rewrites its whole state file)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the working folder and its logs")
    args = parser.parse_args()
    reason = missing_services()
    if reason:
        raise SystemExit(reason)
    root = Path(tempfile.mkdtemp(prefix="edgefleet-fleet-scale-"))
    try:
        run(args, root)
    finally:
        if args.keep:
            print(f"logs in {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()

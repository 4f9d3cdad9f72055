"""Scale-out on one machine: records/s stored by one bridge process vs two on the shared subscription.

Each bridge is ``manage.py mqtt_bridge``, a process of its own as in
deploy/compose, subscribed through one shared subscription group; the
messages, the broker and the database are bench/ingest.py's (reused from
there). For each configuration, in alternating rounds:

1. a publisher process offers N telemetry messages as fast as the broker
   takes them (more than one bridge stores per second), and the records/s
   stored is read from the rows: all records over (last ``received_at`` -
   start);
2. the CPU seconds each process spent meanwhile (psutil): the bridges,
   PostgreSQL's backends of this database, Mosquitto, the publisher, and what
   the whole machine had left idle;
3. after the rounds, the publisher sends at one steady rate (the same for both
   configurations) and the ingest lag, device timestamp to ``received_at``, is
   read back: p50, p95.

The workers' share: no Celery task is on the ingest path (the bridge stores
and acknowledges by itself). The worker-bound work that follows ingest is the
rollup (``telemetry.tasks.roll_up``); it is timed over the same rows by one
run and by two runs side by side, as two workers would run it.

    .venv/bin/python -m bench.scale_out --messages 8000 --records 4 --devices 200 --rounds 3 --lag-seconds 15

Prints one JSON line per configuration, one for the rollups and a ratio line.
Needs PostgreSQL (BENCH_SCALE_DATABASE_URL, default
postgres://postgres@127.0.0.1:5432/edgefleet_bench_scale, created if missing)
and /usr/sbin/mosquitto.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import psutil

from bench.ingest import free_port, make_devices, payloads, run_publisher, setup_django, start_mosquitto

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DB = "postgres://postgres@127.0.0.1:5432/edgefleet_bench_scale"


class Bridges:
    """``count`` bridge processes on one shared subscription, each with its probe port for readiness."""

    def __init__(self, count: int, port: int, database_url: str) -> None:
        self.processes: list[subprocess.Popen[bytes]] = []
        env = {
            **os.environ,
            "DATABASE_URL": database_url,
            "MQTT_URL": f"mqtt://127.0.0.1:{port}",
            "MQTT_SHARED_GROUP": "bench-scale",
            "BROKER_PROVISIONER": "none",
            "LOG_LEVEL": "WARNING",
            "PROBE_ADDRESS": "127.0.0.1",
        }
        probes = []
        for _ in range(count):
            probe = free_port()
            probes.append(probe)
            self.processes.append(
                subprocess.Popen(
                    [sys.executable, "manage.py", "mqtt_bridge"],
                    cwd=ROOT,
                    env={**env, "PROBE_PORT": str(probe)},
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        for probe in probes:
            _wait_ready(f"http://127.0.0.1:{probe}/readyz")

    def stop(self) -> None:
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            process.wait(30)


def _wait_ready(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:  # noqa: S310 - a local probe
                if answer.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"bridge not ready: {url}")


class CpuMeter:
    """CPU seconds per group of processes between ``start`` and ``stop``, sampled so short-lived ones count."""

    def __init__(self, groups: dict[str, Any]) -> None:
        self.groups = groups  # name -> callable returning the pids of that group now
        self.first: dict[int, float] = {}
        self.last: dict[int, tuple[str, float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        for name, pids in self.groups.items():
            for pid in pids():
                try:
                    times = psutil.Process(pid).cpu_times()
                except psutil.Error:
                    continue
                used = times.user + times.system
                self.first.setdefault(pid, used if not self._thread.is_alive() else 0.0)
                self.last[pid] = (name, used)

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            self._sample()

    def start(self) -> None:
        self._sample()
        self._machine = psutil.cpu_times()
        self._started = time.monotonic()
        self._thread.start()

    def stop(self) -> dict[str, float]:
        self._stop.set()
        self._thread.join()
        self._sample()
        machine = psutil.cpu_times()
        spent: dict[str, float] = dict.fromkeys(self.groups, 0.0)
        for pid, (name, used) in self.last.items():
            spent[name] += used - self.first.get(pid, 0.0)
        busy = sum(
            getattr(machine, f) - getattr(self._machine, f) for f in ("user", "system", "nice", "irq", "softirq")
        )
        idle = (machine.idle - self._machine.idle) + (machine.iowait - self._machine.iowait)
        out = {name: round(value, 2) for name, value in spent.items()}
        out["machine_busy"] = round(busy, 2)
        out["machine_idle"] = round(idle, 2)
        out["window_s"] = round(time.monotonic() - self._started, 2)
        return out


def postgres_backends(database: str) -> list[int]:
    pids = []
    for process in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(process.info["cmdline"] or [])
        if cmdline.startswith("postgres:") and f" {database} " in cmdline:
            pids.append(process.pid)
    return pids


def acknowledged() -> int:
    """Records stored, all devices together: every round's seqs follow on without a gap, so the watermarks count them.

    (A count over the records table would scan it every poll, at the cost of
    the PostgreSQL CPU this benchmark measures.)
    """
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT coalesce(sum(telemetry_acked_seq), 0) FROM fleet_device")
        return int(cursor.fetchone()[0])


def wait_stored(expected: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while (done := acknowledged()) < expected:
        if time.monotonic() > deadline:
            raise SystemExit(f"{done} of {expected} records stored: a bridge dropped messages (inbox full?)")
        time.sleep(0.25)


def last_received(since: datetime) -> datetime:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT max(received_at) FROM telemetry_telemetryrecord WHERE received_at >= %s", [since])
        return cursor.fetchone()[0]


def burst(
    port: int, bridges: Bridges, items: list[tuple[str, bytes]], records: int, mosquitto: int, database: str
) -> dict[str, Any]:
    """Offer every message at once; records/s stored and the CPU seconds each process spent."""
    total = len(items) * records
    publisher_pids: list[int] = []
    meter = CpuMeter(
        {
            "bridges_cpu_s": lambda: [p.pid for p in bridges.processes],
            "postgres_cpu_s": lambda: postgres_backends(database),
            "mosquitto_cpu_s": lambda: [mosquitto],
            "publisher_cpu_s": lambda: publisher_pids,
        }
    )
    meter.start()
    expected = acknowledged() + total
    since = datetime.now(timezone.utc)
    publisher = run_publisher(port, items)
    publisher_pids.append(publisher.pid or 0)
    wait_stored(expected, 900)
    publisher.join(60)
    cpu = meter.stop()
    elapsed = (last_received(since) - since).total_seconds()
    return {"records_per_s": total / elapsed, "seconds": elapsed, **cpu}


def lag(port: int, items: list[tuple[str, bytes]], rate: float, records: int) -> dict[str, float]:
    from django.db import connection

    expected = acknowledged() + len(items) * records
    since = datetime.now(timezone.utc)
    publisher = run_publisher(port, items, rate=rate)
    publisher.join(900)
    wait_stored(expected, 300)
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT percentile_cont(ARRAY[0.5, 0.95]) WITHIN GROUP "
            "(ORDER BY EXTRACT(EPOCH FROM received_at - recorded_at)) "
            "FROM telemetry_telemetryrecord WHERE received_at >= %s",
            [since],
        )
        ((p50, p95),) = cursor.fetchone()
    return {"lag_p50_ms": round(p50 * 1000, 1), "lag_p95_ms": round(p95 * 1000, 1)}


def rollups(workers: int) -> dict[str, Any]:
    """Seconds until every stored record is rolled up by ``workers`` running rollup runs side by side.

    Each one runs ``roll_up`` again until a run finds nothing left, as a worker
    would take the beat's next task; the rollups start from nothing each time.
    """
    from django.db import connection

    from telemetry import rollups as telemetry_rollups
    from telemetry.models import Cursor, HeartbeatRollup, WindowRollup

    WindowRollup.objects.all().delete()
    HeartbeatRollup.objects.all().delete()
    Cursor.objects.update_or_create(
        name=telemetry_rollups.CURSOR, defaults={"position": datetime(2000, 1, 1, tzinfo=timezone.utc)}
    )
    # Past the settling time, so every stored record is due.
    now = datetime.now(timezone.utc) + telemetry_rollups.SETTLE + timedelta(seconds=1)
    counted: list[list[int]] = [[] for _ in range(workers)]

    def work(mine: list[int]) -> None:
        try:
            while records := telemetry_rollups.roll_up(now=now).records:
                mine.append(records)
            mine.append(0)
        finally:
            connection.close()

    threads = [threading.Thread(target=work, args=(mine,)) for mine in counted]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - start
    total = sum(map(sum, counted))
    return {"workers": workers, "seconds": round(seconds, 2), "records_per_s": round(total / seconds), "runs": counted}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=8_000, help="per burst; a bridge's inbox holds 10,000")
    parser.add_argument("--records", type=int, default=4, help="records per message")
    parser.add_argument("--devices", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3, help="alternating one-bridge/two-bridge rounds")
    parser.add_argument("--lag-seconds", type=float, default=15.0)
    args = parser.parse_args()

    database_url = os.environ.get("BENCH_SCALE_DATABASE_URL", DEFAULT_DB)
    database = database_url.rsplit("/", 1)[1]
    setup_django(database_url)
    workdir = Path(tempfile.mkdtemp(prefix="edgefleet-bench-scale-"))
    broker, port = start_mosquitto(workdir)
    results: dict[int, list[dict[str, Any]]] = {1: [], 2: []}
    lags: dict[int, dict[str, float]] = {}
    try:
        device_ids = make_devices(args.devices)
        seqs = dict.fromkeys(device_ids, 0)
        # Rounds alternate the configurations, so load from elsewhere on the
        # machine falls on both alike; the median of each is the figure.
        for _ in range(args.rounds):
            for count in (1, 2):
                bridges = Bridges(count, port, database_url)
                try:
                    items = payloads(device_ids, args.messages, args.records, seqs, paced_ts=False)
                    results[count].append(burst(port, bridges, items, args.records, broker.pid, database))
                finally:
                    bridges.stop()
        one = statistics.median(r["records_per_s"] for r in results[1])
        # The same steady load for both: half of what one bridge stores.
        rate = 0.5 * one / args.records
        for count in (1, 2):
            bridges = Bridges(count, port, database_url)
            try:
                items = payloads(device_ids, max(1, int(rate * args.lag_seconds)), args.records, seqs, paced_ts=True)
                lags[count] = lag(port, items, rate, args.records)
            finally:
                bridges.stop()
        rolled = [rollups(1), rollups(2)]
    finally:
        broker.terminate()
        broker.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)

    medians = {}
    for count in (1, 2):
        rounds = results[count]
        medians[count] = statistics.median(r["records_per_s"] for r in rounds)
        line = {
            "bridges": count,
            "messages": args.messages,
            "records_per_message": args.records,
            "devices": args.devices,
            "records_per_s": [round(r["records_per_s"]) for r in rounds],
            "records_per_s_median": round(medians[count]),
            "lag_rate_records_per_s": round(rate * args.records),
            **lags[count],
            "cpu_s_per_round": [
                {k: v for k, v in r.items() if k.endswith(("_cpu_s", "_busy", "_idle", "window_s"))} for r in rounds
            ],
            "seconds_per_round": [round(r["seconds"], 2) for r in rounds],
        }
        print(json.dumps(line))
    print(json.dumps({"rollups": rolled}))
    print(
        json.dumps(
            {
                "ratio_two_bridges_over_one": round(medians[2] / medians[1], 3),
                "ratios_per_round": [
                    round(b["records_per_s"] / a["records_per_s"], 3)
                    for a, b in zip(results[1], results[2], strict=True)
                ],
                "rollup_two_runs_over_one_seconds": round(rolled[1]["seconds"] / rolled[0]["seconds"], 3),
            }
        )
    )


if __name__ == "__main__":
    main()

"""Telemetry ingest: records/s one bridge stores into PostgreSQL vs a bare paho subscriber, and ingest lag.

One run, one private Mosquitto, the same messages for both:

1. a bare paho subscriber (QoS 1, shared subscription) receives N telemetry
   messages from a publisher process sending as fast as it can;
2. one bridge (``bridge.process.Bridge``, batching on) receives the same
   messages (fresh sequence numbers) and stores them into PostgreSQL;
3. the publisher sends at a steady 50 % of the bridge's measured rate for a
   while, and the ingest lag (record timestamp on the device to ``received_at``
   in the database) is read back from the stored rows: p50, p95, p99.

    .venv/bin/python -m bench.ingest --messages 20000 --records 2 --devices 100 --rounds 3 --lag-seconds 20

Prints one JSON line; ``ratio_median`` is the median over alternating rounds
of bridge records/s over bare records/s (target >= 0.5). Needs PostgreSQL (BENCH_DATABASE_URL, default
postgres://postgres@127.0.0.1:5432/edgefleet_bench_telemetry, created if
missing) and /usr/sbin/mosquitto.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

DEFAULT_DB = "postgres://postgres@127.0.0.1:5432/edgefleet_bench_telemetry"


# --- broker ---------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_mosquitto(workdir: Path, max_inflight: int = 0) -> tuple[subprocess.Popen[bytes], int]:
    """A private Mosquitto; ``max_inflight`` caps the QoS 1 messages it has unacknowledged at a client (0: none)."""
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    port = free_port()
    config = workdir / "mosquitto.conf"
    # Unbounded queues: Mosquitto's default (1,000 per client) would silently
    # drop what a slower consumer has not taken yet.
    config.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
        f"max_queued_messages 0\nmax_inflight_messages {max_inflight}\nmax_queued_bytes 0\n"
    )
    process = subprocess.Popen([binary, "-c", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return process, port
        except OSError:
            time.sleep(0.05)
    process.kill()
    raise SystemExit("mosquitto did not start")


# --- messages -------------------------------------------------------------------


def payloads(
    device_ids: list[str], messages: int, records: int, seqs: dict[str, int], paced_ts: bool
) -> list[tuple[str, bytes]]:
    """Realistic telemetry: window summaries (and a heartbeat in every fifth message).

    ``seqs`` holds each device's last seq and is moved on, so successive calls
    continue every device's sequence without a gap (a gap would hold its ack).
    """
    import random

    from agent.kernel import histogram, protocol

    rng = random.Random(1)  # noqa: S311 - synthetic data, not secrets
    now = datetime.now(timezone.utc)
    latency = histogram.LatencyHistogram.of(rng.lognormvariate(3.0, 0.3) for _ in range(300)).to_wire()
    confidence = histogram.confidence_histogram(rng.betavariate(6, 2) for _ in range(300))
    window = {
        "start": now.isoformat(),
        "end": (now + timedelta(seconds=10)).isoformat(),
        "model_name": "detector",
        "model_version": "1.0.0",
        "frames": 300,
        "errors": 0,
        "escalations": 7,
        "dropped_frames": 0,
        "latency_ms": latency,
        "confidence": confidence,
        "classes": {"ok": 281, "defect": 19},
    }
    beat = {
        "agent_version": "0.1.0",
        "uptime_s": 100.0,
        "cpu_percent": 40.0,
        "memory_percent": 30.0,
        "disk_percent": 20.0,
        "disk_free_bytes": 10**9,
        "temperature_c": 55.0,
        "outbox_depth": 3,
    }
    out = []
    for i in range(messages):
        device = device_ids[i % len(device_ids)]
        batch = []
        for j in range(records):
            seqs[device] += 1
            kind, data = ("heartbeat", beat) if (j == 0 and i % 5 == 0) else ("window", window)
            # Paced runs stamp records when sent (see publish); "TS" is replaced there.
            batch.append({"seq": seqs[device], "kind": kind, "ts": "TS" if paced_ts else now.isoformat(), "data": data})
        body = json.dumps({"v": 1, "type": "telemetry", "records": batch})
        out.append((protocol.topic(device, "telemetry"), body.encode()))
    return out


def publish(port: int, items: list[tuple[str, bytes]], rate: float | None, started: Any) -> None:
    """Publisher process: QoS 1, as fast as the broker takes them or at ``rate`` messages/s."""
    import paho.mqtt.client as mqtt

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-pub-{os.getpid()}")
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    client.connect("127.0.0.1", port)
    client.loop_start()
    started.set()
    t0 = time.monotonic()
    infos = []
    for i, (topic, body) in enumerate(items):
        if rate:
            delay = t0 + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            body = body.replace(b'"TS"', json.dumps(datetime.now(timezone.utc).isoformat()).encode())
        infos.append(client.publish(topic, body, qos=1))
    for info in infos:
        info.wait_for_publish(60)
    client.disconnect()
    client.loop_stop()


def run_publisher(port: int, items: list[tuple[str, bytes]], rate: float | None = None) -> multiprocessing.Process:
    started = multiprocessing.Event()
    process = multiprocessing.Process(target=publish, args=(port, items, rate, started), daemon=True)
    process.start()
    started.wait(30)
    return process


# --- consumers ------------------------------------------------------------------


def bare_rate(port: int, items: list[tuple[str, bytes]]) -> float:
    """Messages/s a bare paho subscriber receives (QoS 1, shared subscription, callbacks count only)."""
    import paho.mqtt.client as mqtt

    done = threading.Event()
    got = {"n": 0, "first": 0.0, "last": 0.0}

    def on_message(client: Any, userdata: Any, message: Any) -> None:
        now = time.perf_counter()
        if got["n"] == 0:
            got["first"] = now
        got["n"] += 1
        got["last"] = now
        if got["n"] == len(items):
            done.set()

    subscribed = threading.Event()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-bare")
    client.on_message = on_message
    client.on_subscribe = lambda *a: subscribed.set()
    client.connect("127.0.0.1", port)
    client.loop_start()
    client.subscribe("$share/bare/edgefleet/v1/+/telemetry", qos=1)
    subscribed.wait(10)
    start = time.perf_counter()
    publisher = run_publisher(port, items)
    if not done.wait(600):
        raise SystemExit(f"bare subscriber got {got['n']} of {len(items)}")
    elapsed = got["last"] - start
    publisher.join(60)
    client.disconnect()
    client.loop_stop()
    return len(items) / elapsed


def start_bridge(port: int, queue_size: int) -> Any:
    from bridge.process import Bridge, BridgeConfig

    bridge = Bridge(BridgeConfig(url=f"mqtt://127.0.0.1:{port}", shared_group="bench", queue_size=queue_size))
    bridge.start()
    if not bridge.wait_connected(10):  # connected and subscribed (SUBACK)
        raise SystemExit("bridge did not connect")
    return bridge


def bridge_rate(port: int, bridge: Any, items: list[tuple[str, bytes]], records: int) -> float:
    """Records/s the bridge stores (counted after commit) while the publisher sends as fast as it can."""
    before = bridge.records
    total = len(items) * records
    start = time.perf_counter()
    publisher = run_publisher(port, items)
    if not bridge.wait_for(lambda b: b.records >= before + total, timeout=900):
        raise SystemExit(f"bridge stored {bridge.records - before} of {total} (rejected {dict(bridge.rejected)})")
    elapsed = time.perf_counter() - start
    publisher.join(60)
    return total / elapsed


def lag(
    port: int, bridge: Any, items: list[tuple[str, bytes]], rate: float, records: int, since: datetime
) -> dict[str, float]:
    from django.db import connection

    before = bridge.records
    publisher = run_publisher(port, items, rate=rate)
    publisher.join(900)
    if not bridge.wait_for(lambda b: b.records >= before + len(items) * records, timeout=300):
        raise SystemExit("bridge fell behind in the lag phase")
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP "
            "(ORDER BY EXTRACT(EPOCH FROM received_at - recorded_at)) , count(*) "
            "FROM telemetry_telemetryrecord WHERE received_at >= %s",
            [since],
        )
        (p50, p95, p99), count = cursor.fetchone()
    return {"lag_p50_ms": p50 * 1000, "lag_p95_ms": p95 * 1000, "lag_p99_ms": p99 * 1000, "lag_records": count}


# --- setup ----------------------------------------------------------------------


def setup_django(database_url: str) -> None:
    import psycopg

    name = database_url.rsplit("/", 1)[1]
    with psycopg.connect(database_url.rsplit("/", 1)[0] + "/postgres", autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone():
            conn.execute(f'CREATE DATABASE "{name}"')
    os.environ["DATABASE_URL"] = database_url
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    os.environ.setdefault("EDGEFLEET_DATA_DIR", tempfile.mkdtemp(prefix="edgefleet-bench-"))
    os.environ.setdefault("BROKER_PROVISIONER", "none")
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def make_devices(count: int) -> list[str]:
    """Fresh devices on an empty, vacuumed records table, so every run starts from the same state.

    The benchmark database is its own (``BENCH_DATABASE_URL``): emptying it
    with TRUNCATE rather than DELETE leaves no dead rows of earlier runs for
    the inserts to step over.
    """
    from django.db import connection

    from fleet.models import Device, Site
    from telemetry.models import TelemetryRecord

    site, _ = Site.objects.get_or_create(slug="bench", defaults={"name": "Bench"})
    with connection.cursor() as cursor:
        cursor.execute(f"TRUNCATE {TelemetryRecord._meta.db_table}")
    Device.objects.filter(site=site).delete()
    with connection.cursor() as cursor:
        cursor.execute(f"VACUUM ANALYZE {TelemetryRecord._meta.db_table}")
    devices = Device.objects.bulk_create(
        [Device(site=site, name=f"bench-{i}", device_id=f"bench-{i:05d}", online=True) for i in range(count)]
    )
    return [d.device_id for d in devices]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--records", type=int, default=2, help="records per message")
    parser.add_argument("--devices", type=int, default=100)
    parser.add_argument("--lag-seconds", type=float, default=20.0)
    parser.add_argument("--rounds", type=int, default=3, help="alternating bare/bridge rounds")
    parser.add_argument(
        "--max-inflight",
        type=int,
        default=0,
        help="the broker's in-flight window per client (0: unbounded; deploy/mosquitto/mosquitto.conf has 100)",
    )
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args()

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    setup_django(os.environ.get("BENCH_DATABASE_URL", DEFAULT_DB))
    workdir = Path(tempfile.mkdtemp(prefix="edgefleet-bench-broker-"))
    broker, port = start_mosquitto(workdir, args.max_inflight)
    try:
        device_ids = make_devices(args.devices)
        # This process is the bridge process: tune its collector as
        # ``manage.py mqtt_bridge`` does (the bare subscriber gets it too).
        from bridge.process import tune_gc

        tune_gc()
        bare_seqs = dict.fromkeys(device_ids, 0)
        bridge_seqs = dict.fromkeys(device_ids, 0)
        # Rounds alternate the two consumers so that load from elsewhere on the
        # machine falls on both alike; the median ratio is the figure. Only one
        # consumer is subscribed at a time: a bridge left subscribed during the
        # bare round would take the cores from it and carry its backlog into
        # its own round.
        bare_rates, bridge_rates = [], []
        for _ in range(args.rounds):
            bare_items = payloads(device_ids, args.messages, args.records, bare_seqs, paced_ts=False)
            bare_rates.append(bare_rate(port, bare_items) * args.records)
            bridge = start_bridge(port, 2 * args.messages + 10)  # room for every message in each worker inbox
            bridge_items = payloads(device_ids, args.messages, args.records, bridge_seqs, paced_ts=False)
            bridge_rates.append(bridge_rate(port, bridge, bridge_items, args.records))
            bridge.stop()
        bridge = start_bridge(port, 2 * args.messages + 10)  # room for every message in each worker inbox
        ratios = [b / a for a, b in zip(bare_rates, bridge_rates, strict=True)]
        stored = statistics.median(bridge_rates)
        target = 0.5 * stored / args.records
        lag_count = max(1, int(target * args.lag_seconds))
        since = datetime.now(timezone.utc)
        lag_items = payloads(device_ids, lag_count, args.records, bridge_seqs, paced_ts=True)
        figures = lag(port, bridge, lag_items, target, args.records, since)
        bridge.stop()
    finally:
        broker.terminate()
        broker.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)
    result = {
        "messages": args.messages,
        "records_per_message": args.records,
        "devices": args.devices,
        "rounds": args.rounds,
        "max_inflight": args.max_inflight,
        "bare_records_per_s": [round(r) for r in bare_rates],
        "bridge_records_per_s": [round(r) for r in bridge_rates],
        "ratios": [round(r, 3) for r in ratios],
        "ratio_median": round(statistics.median(ratios), 3),
        "lag_rate_msgs_per_s": round(target, 1),
        "lag_seconds": args.lag_seconds,
        **{k: round(v, 1) if isinstance(v, float) else v for k, v in figures.items()},
    }
    print(json.dumps(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()

"""The agent's outbox: durable records/s, and how fast a backlog drains after an outage.

Two measurements, printed as JSON lines:

1. ``durable``: records/s made durable by ``agent.outbox.Outbox`` (batched commits, WAL),
   side by side with the naive way (one ``synchronous=FULL`` commit per record) on the same disk.
2. ``drain``: the agent's real ``Runtime`` (outbox, MQTT link, pump) comes back after an outage
   with ``--outage-s`` worth of records produced at ``--rate`` records/s, and keeps producing at
   that rate while it drains through the real broker to a stand-in control plane that stores
   records de-duplicated on seq and acknowledges the highest contiguous one, as the bridge does
   (``tests.fakes.MqttControlPlane``, the one the agent tests use).
   ``drain_per_production`` is backlog records delivered per second over records produced per
   second (target >= 10); ``live_delay_p95_s`` shows live records are not starved meanwhile.

    .venv/bin/python -m bench.outbox                      # a private Mosquitto on a free port
    .venv/bin/python -m bench.outbox --rate 200 --outage-s 300 --broker mqtt://127.0.0.1:1883

By default a private Mosquitto runs with ``max_queued_messages 100000`` (as deploy/ configures
it): with Mosquitto's default of 1,000 the broker silently drops a fast drain's messages and the
agent resends them after ``outbox.resend_after_s``, which measures the broker, not the agent.
The stand-in acknowledges without a database; the bridge's own ingest rate is ``bench/ingest.py``.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from agent.outbox import Outbox
from tests.agent.helpers import make_agent_config
from tests.fakes import MqttControlPlane, TelemetryStore

WINDOW = {"start": "2026-01-01T00:00:00Z", "end": "2026-01-01T00:01:00Z", "frames": 1200, "classes": {"ok": 1190}}


def durable(records: int, naive_records: int, directory: Path) -> dict[str, Any]:
    box = Outbox(directory / "outbox.db", max_bytes=1024 * 1024 * 1024)
    start = time.perf_counter()
    for i in range(records):
        box.append("window", {**WINDOW, "i": i})
    box.commit()
    batched = records / (time.perf_counter() - start)
    box.close()
    db = sqlite3.connect(directory / "naive.db", isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE records (seq INTEGER PRIMARY KEY, body TEXT)")
    body = json.dumps(WINDOW)
    start = time.perf_counter()
    for i in range(naive_records):
        db.execute("BEGIN")
        db.execute("INSERT INTO records (seq, body) VALUES (?, ?)", (i, body))
        db.execute("COMMIT")
    naive = naive_records / (time.perf_counter() - start)
    db.close()
    return {
        "bench": "durable",
        "records": records,
        "outbox_records_per_s": round(batched),
        "one_fsync_per_record_per_s": round(naive),
        "ratio": round(batched / naive, 1),
    }


def drain(rate: float, outage_s: float, broker: str, directory: Path) -> dict[str, Any]:
    from agent.runtime import Runtime

    device_id = f"bench-{uuid.uuid4().hex[:10]}"
    config = make_agent_config(
        directory / "agent", mqtt_url=broker, device_id=device_id, trust=[], agent={"heartbeat_interval_s": 30}
    )
    runtime = Runtime(config)
    backlog = int(rate * outage_s)
    # The outage: what the device produced while nothing could leave.
    for i in range(backlog):
        runtime.outbox.append("window", {**WINDOW, "i": i})
    runtime.outbox.commit()
    top = runtime.outbox.stats().last_seq
    live_delays: list[float] = []

    def note_live(seq: int, data: dict[str, Any]) -> None:
        produced = data.get("produced_at")
        if data.get("live") and produced is not None:
            live_delays.append(time.time() - float(produced))

    try:
        control_plane = MqttControlPlane(broker, device_id, store=TelemetryStore(on_record=note_live))
    except RuntimeError as exc:
        raise SystemExit(str(exc)) from None
    cloud = control_plane.store
    stop = threading.Event()

    def produce() -> None:
        interval, due = 1.0 / rate, time.monotonic()
        while not stop.is_set():
            runtime.outbox.append("window", {**WINDOW, "live": True, "produced_at": time.time()})
            due += interval
            stop.wait(max(0.0, due - time.monotonic()))

    threading.Thread(target=runtime.run, name="runtime", daemon=True).start()
    start = time.perf_counter()
    threading.Thread(target=produce, name="producer", daemon=True).start()
    with cloud.changed:
        done = cloud.changed.wait_for(lambda: cloud.contiguous >= top, timeout=600)
    elapsed = time.perf_counter() - start
    time.sleep(1.0)  # let the last live records land for the delay figures
    stop.set()
    runtime.stop()
    control_plane.close()
    if not done:
        raise SystemExit(f"the backlog did not drain: {cloud.contiguous} of {top} after {elapsed:.0f} s")
    delays = sorted(live_delays)
    drain_rate = backlog / elapsed
    return {
        "bench": "drain",
        "rate_per_s": rate,
        "outage_s": outage_s,
        "backlog": backlog,
        "drain_s": round(elapsed, 2),
        "drain_records_per_s": round(drain_rate),
        "drain_per_production": round(drain_rate / rate, 1),
        "live_records_during_drain": len(delays),
        "live_delay_p50_s": round(statistics.median(delays), 3) if delays else None,
        "live_delay_p95_s": round(delays[int(0.95 * (len(delays) - 1))], 3) if delays else None,
    }


def private_broker(directory: Path) -> tuple[Any, str]:
    import os
    import pwd
    import socket
    import subprocess

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    conf = directory / "mosquitto.conf"
    conf.write_text(
        f"user {pwd.getpwuid(os.geteuid()).pw_name}\nlistener {port} 127.0.0.1\nallow_anonymous true\n"
        "persistence false\nmax_queued_messages 100000\nmax_inflight_messages 0\n"
    )
    process = subprocess.Popen(
        ["/usr/sbin/mosquitto", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            time.sleep(0.05)
    return process, f"mqtt://127.0.0.1:{port}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.outbox", description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=50_000)
    parser.add_argument("--naive-records", type=int, default=2_000)
    parser.add_argument("--rate", type=float, default=50.0, help="records/s the device produces")
    parser.add_argument("--outage-s", type=float, default=600.0, help="how long the broker was unreachable")
    parser.add_argument("--broker", default=None, help="default: a private Mosquitto started here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        print(json.dumps(durable(args.records, args.naive_records, Path(tmp))), flush=True)
        process, broker = (None, args.broker) if args.broker else private_broker(Path(tmp))
        try:
            print(json.dumps({**drain(args.rate, args.outage_s, broker, Path(tmp)), "broker": broker}), flush=True)
        finally:
            if process is not None:
                process.terminate()
                process.wait(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())

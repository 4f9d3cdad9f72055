"""Presence and reports: messages/s a bridge applies in batches against one at a time, side by side.

A reconnect storm: every device sends its status and its ``reported`` at
once. In alternating rounds, on the same devices, a bridge applies them as
its worker drains them (``Bridge.handle_many`` on batches of
``--batch``, the devices' rows locked once and written back in one
statement), and one message at a time (``Bridge.handle``, one transaction
each, the path a batch of one takes). No broker: this is the bridge's
storing cost alone.

    .venv/bin/python -m bench.presence --devices 2000 --rounds 3

Prints one JSON line; ``ratio_median`` is batched messages/s over one at a time. Needs PostgreSQL
(BENCH_DATABASE_URL, default postgres://postgres@127.0.0.1:5432/edgefleet_bench_presence, created if missing).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

DEFAULT_DB = "postgres://postgres@127.0.0.1:5432/edgefleet_bench_presence"


def storm(device_ids: list[str], generation: int) -> list[tuple[str, bytes]]:
    """Each device's status and report, as a reconnecting fleet sends them."""
    from agent.kernel import protocol

    now = datetime.now(timezone.utc)
    items = []
    for device_id in device_ids:
        status = protocol.Status(state="online", ts=now, agent_version="0.2.0")
        reported = protocol.Reported(
            generation=generation, agent_version="0.2.0", phase="active", model_version="1.1.0", ts=now
        )
        items.append((protocol.topic(device_id, "status"), protocol.encode(status)))
        items.append((protocol.topic(device_id, "reported"), protocol.encode(reported)))
    return items


def rate(items: list[tuple[str, bytes]], batch: int) -> float:
    """Messages/s applied; ``batch`` 1 is one message at a time."""
    from bridge.process import Bridge, BridgeConfig
    from fleet.models import Device

    # Every round starts from the same state: the devices offline, as after an outage.
    Device.objects.filter(device_id__startswith="bench-").update(
        online=False, status_changed_at=datetime.now(timezone.utc) - timedelta(hours=1)
    )
    bridge = Bridge(BridgeConfig(url="mqtt://127.0.0.1:1"))
    started = time.perf_counter()
    if batch == 1:
        verdicts = [bridge.handle(*item) for item in items]
    else:
        verdicts = [v for k in range(0, len(items), batch) for v in bridge.handle_many(items[k : k + batch])]
    elapsed = time.perf_counter() - started
    if set(verdicts) != {"ok"}:
        raise SystemExit(f"not every message was applied: {sorted(set(verdicts))}")
    return len(items) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=500, help="messages per batch (BRIDGE_BATCH_MESSAGES)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating one-at-a-time/batched rounds")
    args = parser.parse_args()

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from bench.ingest import make_devices, setup_django

    setup_django(os.environ.get("BENCH_DATABASE_URL", DEFAULT_DB))
    device_ids = make_devices(args.devices)
    alone, batched = [], []
    for n in range(args.rounds):
        alone.append(rate(storm(device_ids, 2 * n + 1), 1))
        batched.append(rate(storm(device_ids, 2 * n + 2), args.batch))
    ratios = [b / a for a, b in zip(alone, batched, strict=True)]
    print(
        json.dumps(
            {
                "devices": args.devices,
                "messages_per_round": 2 * args.devices,
                "batch": args.batch,
                "one_at_a_time_per_s": [round(r) for r in alone],
                "batched_per_s": [round(r) for r in batched],
                "ratios": [round(r, 2) for r in ratios],
                "ratio_median": round(statistics.median(ratios), 2),
            }
        )
    )


if __name__ == "__main__":
    main()

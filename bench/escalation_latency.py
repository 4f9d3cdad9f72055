"""End-to-end latency of escalations on a running system: from upload to the cloud's answer on the device.

Reads a running control plane over its REST API (the demo's, or any):
every escalation the cloud answered, and each device's ``escalation_answered``
events (stamped on the device as it records the answer). Joined by escalation
id, it prints p50/p95/max of

* upload -> answer on the device: the event's time minus the escalation's
  ``received_at`` (the server's clock): queueing for a batch, the cloud
  model, the command outbox, the bridge and MQTT;
* capture -> answer on the device: minus ``captured_at`` (the device's
  clock), adding the device's own queue and upload.

On one machine (the demo) both clocks are the same clock.

    make demo            # in another terminal; wait a few minutes for escalations
    .venv/bin/python -m bench.escalation_latency --server http://127.0.0.1:8000 --token eft_...
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from typing import Any

import numpy as np

from registry.client import call


def pages(server: str, token: str, path: str, limit: int = 500) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    offset = 0
    while True:
        sep = "&" if "?" in path else "?"
        page = call(server, token, "GET", f"{path}{sep}limit={limit}&offset={offset}")
        rows.extend(page["results"])
        offset += limit
        if page.get("next") is None:
            return rows


def parse(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def summary(values: list[float]) -> dict[str, float | int]:
    data = np.asarray(values, dtype=float)
    return {
        "n": int(data.size),
        "p50_s": round(float(np.percentile(data, 50)), 3),
        "p95_s": round(float(np.percentile(data, 95)), 3),
        "max_s": round(float(data.max()), 3),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", required=True)
    parser.add_argument("--token", required=True)
    args = parser.parse_args(argv)
    escalations = {e["id"]: e for e in pages(args.server, args.token, "/api/v1/escalations/") if e["answered_at"]}
    devices = {e["device"] for e in escalations.values()}
    upload, capture = [], []
    for device in sorted(devices):
        events = pages(args.server, args.token, f"/api/v1/devices/{device}/events/?kind=escalation_answered")
        for event in events:
            row = escalations.get(event["data"].get("escalation"))
            if row is None:
                continue
            at = parse(event["at"])
            upload.append((at - parse(row["received_at"])).total_seconds())
            capture.append((at - parse(row["captured_at"])).total_seconds())
    if not upload:
        print("no answered escalation has reached its device yet", file=sys.stderr)
        return 1
    print(json.dumps({"upload_to_answer_on_device": summary(upload), "capture_to_answer_on_device": summary(capture)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

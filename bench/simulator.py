"""How many simulated devices one ``edgefleet-sim`` process sustains on a real Mosquitto.

For each fleet size: every device connects (its own MQTT connection, all on
one event loop), sends a heartbeat and a window every ``--interval`` seconds,
and a helper process stands in for the control plane's bridge: it acknowledges
each telemetry batch on the device's ``ack`` topic and, after the steady-state
measurement, sends every device a signed ``desired`` document, which each
verifies (Ed25519) before it "installs" the version over its site's simulated
uplink. Printed per size, one JSON line:

* steady state: messages/s in and out of the simulator, its CPU share and
  resident memory, and the event loop's lag (p50/p99 of a 100 ms timer's
  lateness: how late a device's due message goes out);
* ``cpu_us_per_message`` live, against the same devices run offline (no
  broker, ``simulator.offline``) for the same simulated span: the ratio is
  what the MQTT connections cost on top of the simulation itself;
* convergence: seconds from the desired documents' publication to every
  device active on the new version.

    .venv/bin/python -m bench.simulator --devices 1000 2000 5000 --seconds 30 --interval 10

The helper's identities are made up (``bench-...``): point it at a broker that
lets them in (the development Mosquitto, anonymous); nothing is enrolled.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import multiprocessing
import os
import statistics
import time
from datetime import timedelta
from typing import Any

import orjson
import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from agent.kernel import protocol, verify
from simulator import behaviour, live, offline
from simulator import scenario as scenarios


def fleet_scenario(devices: int, interval: float) -> scenarios.Scenario:
    per_site = 100
    return scenarios.parse(
        {
            "seed": 1,
            "duration_s": 86400,
            "window_s": interval,
            "heartbeat_s": interval,
            "model": {"name": "parts", "version": "1.0.0", "bundle_bytes": 4_000_000, "escalation_upload_share": 0},
            "hardware": {"orin": {"fps": 4}, "rpi5": {"fps": 2, "latency_ms": {"median": 35}}},
            "sites": [
                {
                    "name": "bench",
                    "count": max(1, devices // per_site),
                    "devices": min(devices, per_site),
                    "uplink_kbps": 100_000,
                    "hardware": {"orin": 1, "rpi5": 1},
                }
            ],
        }
    )


def _rss_mb() -> float:
    with open(f"/proc/{os.getpid()}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


# --- the stand-in control plane (its own process) --------------------------------------------


def cloud(url: str, private_key: bytes, device_ids: list[str], go: Any, done: Any) -> None:
    """Ack every telemetry batch; on ``go``, send every device a signed desired document for 2.0.0."""
    host, port = live._address(url)
    key = Ed25519PrivateKey.from_private_bytes(private_key)
    key_id = verify.key_id_for(key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw))
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-cloud-{os.getpid()}")

    def on_message(client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        device_id = message.topic.split("/")[2]
        records = orjson.loads(message.payload)["records"]
        ack = protocol.encode(protocol.Ack(seq=records[-1]["seq"]))
        client.publish(protocol.topic(device_id, "ack"), ack, qos=1)

    client.on_message = on_message
    client.on_connect = lambda c, *_: c.subscribe(f"{protocol.TOPIC_ROOT}/+/telemetry", qos=1)
    client.max_inflight_messages_set(1000)
    client.connect(host, port)
    client.loop_start()
    go.wait()
    now = protocol.utcnow()

    def sign(data: bytes) -> dict[str, str]:
        return {"alg": "ed25519", "key_id": key_id, "sig": base64.b64encode(key.sign(data)).decode()}

    for device_id in device_ids:
        document = protocol.Desired(
            device_id=device_id,
            generation=1,
            model=protocol.BundleRef(
                name="parts",
                version="2.0.0",
                sequence=2,
                bundle_url="/api/v1/bundles/2/download",
                size=4_000_000,
                manifest_sha256="0" * 64,
            ),
            issued_at=now,
            expires=now + timedelta(days=7),
        )
        client.publish(
            protocol.topic(device_id, "desired"), protocol.encode(verify.signed_desired(document, sign)), qos=1
        )
    done.wait()
    client.disconnect()
    client.loop_stop()


# --- one fleet size --------------------------------------------------------------------------


async def measure(devices: int, seconds: float, interval: float, url: str) -> dict[str, Any]:
    scenario = fleet_scenario(devices, interval)
    key = Ed25519PrivateKey.generate()
    raw = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    trust = [{"key_id": verify.key_id_for(raw), "public_key": base64.b64encode(raw).decode()}]
    run = os.urandom(3).hex()
    specs = behaviour.fleet(scenario)
    identities = [
        live.Identity(s.name, s.site, f"bench-{run}-{s.index}", "unused", url, trust) for s in specs[:devices]
    ]
    context = multiprocessing.get_context("spawn")
    go, done = context.Event(), context.Event()
    private = key.private_bytes_raw()
    helper = context.Process(target=cloud, args=(url, private, [i.device_id for i in identities], go, done))
    helper.start()
    time.sleep(1.0)
    options = live.Options(server="http://unused", mqtt_url=url, uploads=False, report_every_s=3600, duration_s=1e9)
    fleet = live.LiveFleet(scenario, identities, options)
    result: dict[str, Any] = {"devices": devices, "interval_s": interval}
    lags: list[float] = []

    async def probe() -> None:
        loop = asyncio.get_running_loop()
        while True:
            start = loop.time()
            await asyncio.sleep(0.1)
            lags.append((loop.time() - start - 0.1) * 1000)

    async def drive() -> None:
        started = time.monotonic()
        while fleet.connected < devices:
            await asyncio.sleep(0.2)
            if time.monotonic() - started > 300:
                raise RuntimeError(f"only {fleet.connected} of {devices} connected")
        result["connect_s"] = round(time.monotonic() - started, 1)
        await asyncio.sleep(min(interval * 2, 20))  # every device past its first window
        probing = asyncio.create_task(probe())
        cpu0, wall0 = time.process_time(), time.monotonic()
        out0, in0 = fleet.report.published, fleet.report.received
        await asyncio.sleep(seconds)
        cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
        probing.cancel()
        messages = fleet.report.published - out0 + fleet.report.received - in0
        result.update(
            published_per_s=round((fleet.report.published - out0) / wall, 1),
            received_per_s=round((fleet.report.received - in0) / wall, 1),
            cpu_percent=round(100 * cpu / wall, 1),
            cpu_us_per_message=round(1e6 * cpu / max(1, messages), 1),
            rss_mb=round(_rss_mb(), 1),
            loop_lag_p50_ms=round(statistics.median(lags), 1),
            loop_lag_p99_ms=round(statistics.quantiles(lags, n=100)[98], 1) if len(lags) > 2 else None,
        )
        go.set()
        sent = time.monotonic()
        while sum(d.sim.model_version == "2.0.0" and d.sim.phase == "active" for d in fleet.devices) < devices:
            await asyncio.sleep(0.2)
            if time.monotonic() - sent > 300:
                break
        result["converged"] = sum(d.sim.model_version == "2.0.0" for d in fleet.devices)
        result["converge_s"] = round(time.monotonic() - sent, 1)
        result["desired_refused"] = sum(d.sim.counters.desired_refused for d in fleet.devices)
        fleet.stop()

    driver = asyncio.create_task(drive())
    await fleet.run()
    await driver
    done.set()
    helper.join(30)
    # The same devices, the same simulated span, with no broker: the simulation's own cost per message.
    cpu0 = time.process_time()
    _, trace = offline.simulate(scenario, until_s=seconds + interval)
    cpu = time.process_time() - cpu0
    offline_messages = sum(len(m) for m in trace.by_device.values())
    result["offline_cpu_us_per_message"] = round(1e6 * cpu / max(1, offline_messages), 1)
    result["live_over_offline"] = round(
        result["cpu_us_per_message"] / max(1e-9, result["offline_cpu_us_per_message"]), 2
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, nargs="+", default=[1000, 2000, 5000])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--interval", type=float, default=10.0, help="heartbeat and window interval of every device")
    parser.add_argument("--mqtt", default="mqtt://127.0.0.1:1883")
    args = parser.parse_args()
    live._raise_file_limit(max(args.devices) + 256)
    for devices in args.devices:
        print(json.dumps(asyncio.run(measure(devices, args.seconds, args.interval, args.mqtt))), flush=True)


if __name__ == "__main__":
    main()

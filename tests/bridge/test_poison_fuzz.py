"""Property-based fuzz of every inbound topic against the real bridge, broker and database.

Random JSON within and beyond the protocol's bounds (nesting past what is
re-encoded, integers past their columns, NaN and Infinity literals, dates at
the ends of time, wrong types, booleans for integers, huge strings) goes
through Mosquitto to a started ``Bridge`` with its real worker threads, and
in part straight into ``handle_many`` (the same path a drained inbox takes,
and the only way to send it cloud-to-device topics). Meanwhile one sound
device keeps sending valid telemetry. Afterwards: every device's valid
telemetry is still stored and acknowledged, the rollups move past every
record, every device page answers 200, no worker died and no message cost
more than a rejection with its reason.

``test_the_fleet_survives_the_fuzz`` is bounded to run in about a minute
here (derandomized, no example database); the ``chaos`` variant runs ten
times the examples.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
import pytest
from django.test import Client
from django.utils import timezone as dj_timezone
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.kernel import protocol
from bridge.process import Bridge, BridgeConfig
from fleet.models import Device, Site
from telemetry import rollups
from telemetry.models import Cursor, TelemetryRecord
from tests.payloads import heartbeat_data, window_data

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

# --- values within and beyond every bound ----------------------------------------------------

INTS = [0, -1, 1, 7, 2**31, 2**32 - 1, 2**32, 2**53 + 1, 2**63 - 1, 2**63, 2**64 - 1, 2**64, -(2**63) - 1, 10**30]
FLOATS = [0.0, -0.0, 0.5, 1.0, 99.9, 1e308, -1e308, 5e-324, float("nan"), float("inf"), float("-inf")]
# Offsets from the receiving time, and fixed times at the ends of what anything holds.
OFFSETS = [timedelta(0), timedelta(minutes=-1), timedelta(minutes=10), timedelta(days=1), timedelta(days=400)]
OFFSETS += [timedelta(days=-1), timedelta(days=-40), timedelta(days=-365 * 50), timedelta(days=-365 * 150)]
FIXED_TIMES = [
    "0001-01-01T00:00:00+14:00",
    "0001-01-01T00:00:00Z",
    "9999-12-31T23:59:59-14:00",
    "9999-12-31T23:59:59+14:00",
    "9999-12-31T23:59:59Z",
    "1970-01-01T00:00:00Z",
    "2026-02-30T00:00:00Z",
    "2026-12-05T04:00:00",
    "2026-12-05T04:00:00+24:00",
    "not a time",
    "",
]


def _nested(depth: int, leaf: Any = 1) -> Any:
    value = leaf
    for level in range(depth - 1):
        value = {"a": value} if level % 2 else [value]
    return value


times = st.one_of(
    st.sampled_from(OFFSETS).map(lambda d: (datetime.now(timezone.utc) + d).isoformat()),
    st.sampled_from(FIXED_TIMES),
)
huge_text = st.sampled_from([300, 4001, 70_000, 300_000]).map(lambda n: "x" * n)
scalars = st.one_of(
    st.sampled_from(INTS),
    st.sampled_from(FLOATS),
    st.booleans(),
    st.none(),
    st.text(max_size=20),
    huge_text,
    times,
)
# Python's json encodes some 500 levels; deeper documents are written as text (deep_payload).
deep = st.sampled_from([3, 63, 64, 65, 254, 255, 300]).map(_nested)
wild = st.one_of(
    scalars,
    deep,
    st.recursive(
        scalars,
        lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
        max_leaves=8,
    ),
)


def mutated(template: dict[str, Any], draw: st.DrawFn, extra_keys: tuple[str, ...] = ()) -> dict[str, Any]:
    """The template with up to three fields replaced by wild values, dropped, or added."""
    document = dict(template)
    keys = sorted(set(template) | {"v", "type", "unknown", *extra_keys})
    # Often none: a document within every bound must be stored as well as a wild one refused.
    count = draw(st.sampled_from([0, 0, 1, 2, 3]))
    for key in draw(st.lists(st.sampled_from(keys), min_size=count, max_size=count, unique=True)):
        if draw(st.integers(0, 4)) == 0:
            document.pop(key, None)
        else:
            document[key] = draw(wild)
    return document


@st.composite
def heartbeats(draw: st.DrawFn) -> dict[str, Any]:
    return mutated(heartbeat_data(), draw, ("cpu_freq_max_mhz",))


@st.composite
def windows(draw: st.DrawFn) -> dict[str, Any]:
    start = datetime.now(timezone.utc) - timedelta(seconds=20)
    return mutated(window_data(start, [20.0, 30.0], [0.4, 0.9], ["ok", "ok"]), draw)


@st.composite
def records(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(["heartbeat", "window"]))
    record = {
        "seq": draw(st.integers(1, 10**6)),
        "kind": kind,
        "ts": draw(times) if draw(st.booleans()) else datetime.now(timezone.utc).isoformat(),
        "data": draw(heartbeats() if kind == "heartbeat" else windows()),
    }
    return mutated(record, draw) if draw(st.integers(0, 3)) == 0 else record


# Within every bound, at its edges: what must be stored, rolled up and shown.
INSIDE = [timedelta(0), timedelta(minutes=-1), timedelta(minutes=4), timedelta(hours=5), timedelta(days=1)]
INSIDE += [timedelta(days=-1), timedelta(days=-40), timedelta(days=-365 * 50)]
EDGE_HEARTBEAT = st.fixed_dictionaries(
    {},
    optional={
        "disk_free_bytes": st.sampled_from([0, 2**63 - 1]),
        "outbox_depth": st.sampled_from([0, 2**63 - 1]),
        "temperature_c": st.sampled_from([-273.15, 1000.0, None]),
        "cpu_percent": st.sampled_from([0, 0.0, 102400.0]),
        "uptime_s": st.sampled_from([0.0, 1e308]),
        "cpu_freq_mhz": st.sampled_from([0.0, 1e6, None]),
        "cpu_freq_max_mhz": st.sampled_from([0.0, 1e6]),
        "agent_version": st.sampled_from(["", "v" * 64]),
    },
)
EDGE_WINDOW = st.fixed_dictionaries(
    {},
    optional={
        "frames": st.sampled_from([0, 2**32 - 1]),
        "dropped_frames": st.sampled_from([0, 2**32 - 1]),
        "errors": st.sampled_from([0, 2**32 - 1]),
        "escalations": st.sampled_from([0, 2**32 - 1]),
        "latency_ms": st.sampled_from([{}, {"0": 2**32 - 1, "400": 1}]),
        "classes": st.sampled_from([{}, {"c" * 200: 2**32 - 1}]),
        "model_name": st.sampled_from(["", "m" * 200]),
        "fallback": st.booleans(),
    },
)


@st.composite
def edge_records(draw: st.DrawFn) -> dict[str, Any]:
    ts = datetime.now(timezone.utc) + draw(st.sampled_from(INSIDE))
    seq = draw(st.one_of(st.integers(1, 10**6), st.sampled_from([2**62, 2**63 - 1])))
    if draw(st.booleans()):
        return {"seq": seq, "kind": "heartbeat", "ts": ts.isoformat(), "data": heartbeat_data(**draw(EDGE_HEARTBEAT))}
    data = {**window_data(ts - timedelta(seconds=10), [20.0], [0.5], ["ok"]), **draw(EDGE_WINDOW)}
    return {"seq": seq, "kind": "window", "ts": ts.isoformat(), "data": data}


@st.composite
def documents(draw: st.DrawFn, kind: str) -> dict[str, Any]:
    now = datetime.now(timezone.utc).isoformat()
    if kind == "status":
        template: dict[str, Any] = {"v": 1, "type": "status", "state": "online", "ts": now, "agent_version": "1.0"}
    elif kind == "reported":
        template = {"v": 1, "type": "reported", "generation": 1, "agent_version": "1.0", "phase": "active", "ts": now}
        template |= {"model_name": "detector", "model_version": "1.0.0", "error": None, "fallback": False}
    elif kind == "telemetry" and draw(st.booleans()):
        return {"v": 1, "type": "telemetry", "records": draw(st.lists(edge_records(), min_size=1, max_size=4))}
    elif kind == "telemetry":
        template = {"v": 1, "type": "telemetry", "records": draw(st.lists(records(), min_size=1, max_size=3))}
        if draw(st.booleans()):
            template["floor"] = draw(st.integers(1, 10**6))
    else:
        template = {"v": 1, "type": "event", "kind": "model_swap", "ts": now, "data": {"from": "1.0.0"}}
    return mutated(template, draw, ("floor", "data", "records"))


SUFFIX_TYPES = {"status": "status", "reported": "reported", "telemetry": "telemetry", "events": "event"}


@st.composite
def messages(draw: st.DrawFn, devices: list[str]) -> tuple[str, bytes]:
    """(topic, payload): mostly the topic's own type, sometimes another, garbage or a cut payload."""
    device_id = draw(st.sampled_from([*devices, "dev-0000000000000000"]))
    suffix = draw(st.sampled_from(protocol.DEVICE_TO_CLOUD))
    kind = SUFFIX_TYPES[suffix] if draw(st.integers(0, 5)) else draw(st.sampled_from(sorted(SUFFIX_TYPES.values())))
    payload = json.dumps(draw(documents(kind))).encode()  # NaN and Infinity as their literals
    shape = draw(st.integers(0, 9))
    if shape == 0:
        payload = payload[: draw(st.integers(0, len(payload)))]
    elif shape == 1:
        payload = draw(st.binary(max_size=64))
    elif shape == 2:
        payload = deep_payload(kind, draw(st.sampled_from([300, 1024, 1025, 5000])))
    return protocol.topic(device_id, suffix), payload


def deep_payload(kind: str, depth: int) -> bytes:
    """A message of ``kind`` whose data nests ``depth`` levels (orjson parses 1,024, encodes 254)."""
    data = b'{"a":' * (depth - 1) + b"{}" + b"}" * (depth - 1)
    now = datetime.now(timezone.utc).isoformat().encode()
    if kind == "telemetry":
        record = b'{"seq":1,"kind":"window","ts":"' + now + b'","data":' + data + b"}"
        return b'{"v":1,"type":"telemetry","records":[' + record + b"]}"
    return b'{"v":1,"type":"' + kind.encode() + b'","ts":"' + now + b'","data":' + data + b"}"


# --- the fleet -------------------------------------------------------------------------------


class Device_:
    """A stand-in for every device at once: publishes with plain paho, collects the acks."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.acks: dict[str, int] = {}
        self.arrived = threading.Condition()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"fuzz-{time.monotonic_ns()}")
        self.client.on_message = self._on_message
        self.client.connect(parts.hostname or "127.0.0.1", parts.port or 1883)
        self.client.loop_start()
        self.client.subscribe(f"{protocol.TOPIC_ROOT}/+/ack", qos=1)

    def _on_message(self, client: Any, userdata: Any, message: mqtt.MQTTMessage) -> None:
        device_id = message.topic.split("/")[2]
        with self.arrived:
            self.acks[device_id] = max(self.acks.get(device_id, 0), json.loads(message.payload)["seq"])
            self.arrived.notify_all()

    def publish(self, topic: str, payload: bytes) -> None:
        self.client.publish(topic, payload, qos=1).wait_for_publish(10)

    def wait_for_ack(self, device_id: str, seq: int, timeout: float = 20) -> bool:
        with self.arrived:
            return self.arrived.wait_for(lambda: self.acks.get(device_id, 0) >= seq, timeout)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def fleet(site: Site, enroll_device: Callable[..., Any]) -> list[Device]:
    return [enroll_device(site, name=name).device for name in ("fuzzed-1", "fuzzed-2", "sound")]


@pytest.fixture
def bridge(mqtt_url: str, bridge_group: str | None) -> Iterator[Bridge]:
    # The deployed settings: the wide clock window of BRIDGE_CLOCK_MAX_*.
    bridge = Bridge(BridgeConfig.from_settings(url=mqtt_url, shared_group=bridge_group, desired_poll_s=60))
    bridge.start()
    assert bridge.wait_connected(10), "bridge did not connect"
    yield bridge
    bridge.stop()


@pytest.fixture
def devices(mqtt_url: str) -> Iterator[Device_]:
    client = Device_(mqtt_url)
    yield client
    client.close()


def handled(bridge: Bridge) -> int:
    return sum(bridge.accepted.values()) + sum(bridge.rejected.values())


def sound_batch(seq: int) -> bytes:
    now = datetime.now(timezone.utc)
    record = {"seq": seq, "kind": "window", "ts": now.isoformat(), "data": window_data(now, [20.0], [0.8], ["ok"])}
    return json.dumps({"v": 1, "type": "telemetry", "records": [record]}).encode()


def fuzz(bridge: Bridge, devices: Device_, fleet: list[Device], examples: int) -> None:
    fuzzed, sound = [d.device_id for d in fleet[:2]], fleet[2]
    sent = {"mqtt": 0, "sound": 0}

    @settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
    )
    @given(
        over_mqtt=st.lists(messages(fuzzed), min_size=1, max_size=6),
        direct=st.lists(messages(fuzzed), max_size=4),
        reverse=st.sampled_from(protocol.CLOUD_TO_DEVICE),
    )
    def example(over_mqtt: list[tuple[str, bytes]], direct: list[tuple[str, bytes]], reverse: str) -> None:
        for item in over_mqtt:
            devices.publish(*item)
        sent["sound"] += 1
        devices.publish(protocol.topic(sound.device_id, "telemetry"), sound_batch(sent["sound"]))
        sent["mqtt"] += len(over_mqtt) + 1
        # The drained-inbox path straight from here, with a cloud-to-device topic among them.
        verdicts = bridge.handle_many([*direct, (protocol.topic(fuzzed[0], reverse), b"{}")])
        assert verdicts[-1] == "wrong_direction"
        assert not {"internal_error", "storage_error"} & set(verdicts), verdicts
        sent["mqtt"] += len(direct) + 1
        assert bridge.wait_for(lambda b: handled(b) >= sent["mqtt"], timeout=30), (handled(bridge), sent)

    example()

    assert devices.wait_for_ack(sound.device_id, sent["sound"]), "the sound device's telemetry went unacknowledged"
    assert TelemetryRecord.objects.filter(device=sound).count() == sent["sound"]


def assert_the_fleet_goes_on(bridge: Bridge, devices: Device_, fleet: list[Device], admin_user: Any) -> None:
    # No message cost more than its own rejection; no worker died or stalled.
    assert not {"internal_error", "storage_error"} & set(bridge.rejected), dict(bridge.rejected)
    assert all(bridge.workers_alive().values()) and not bridge.worker_restarts
    assert all(time.time() - at < 10 for at in bridge.worker_progress.values()), bridge.worker_progress

    # Valid telemetry from every device, fuzzed or not, is stored and acknowledged.
    now = datetime.now(timezone.utc)
    for device in fleet:
        device.refresh_from_db()
        seq = device.telemetry_acked_seq + 1
        if seq > protocol.BIGINT_MAX:
            continue  # a fuzzed floor declared every seq sent: nothing is left to send
        record = {"seq": seq, "kind": "heartbeat", "ts": now.isoformat(), "data": heartbeat_data(cpu_percent=1.5)}
        payload = json.dumps({"v": 1, "type": "telemetry", "records": [record], "floor": seq}).encode()
        devices.publish(protocol.topic(device.device_id, "telemetry"), payload)
        assert devices.wait_for_ack(device.device_id, seq), f"{device.device_id} not acknowledged up to {seq}"
        assert TelemetryRecord.objects.filter(device=device, seq=seq).exists()
        device.refresh_from_db()
        assert device.last_heartbeat["cpu_percent"] == 1.5, "a fuzzed heartbeat froze the device's state"

    # The rollups move past every record stored, whatever it holds.
    rollups.roll_up(now=dj_timezone.now() + rollups.SETTLE + timedelta(seconds=1))
    newest = TelemetryRecord.objects.order_by("-received_at").values_list("received_at", flat=True).first()
    assert newest is not None and Cursor.objects.get(name=rollups.CURSOR).position >= newest

    client = Client()
    client.force_login(admin_user)
    for device in fleet:
        assert client.get(f"/devices/{device.device_id}/").status_code == 200
    assert client.get("/").status_code == 200


def test_the_fleet_survives_the_fuzz(bridge: Bridge, devices: Device_, fleet: list[Device], admin_user: Any) -> None:
    fuzz(bridge, devices, fleet, examples=400)
    assert_the_fleet_goes_on(bridge, devices, fleet, admin_user)


@pytest.mark.chaos
def test_the_fleet_survives_a_long_fuzz(bridge: Bridge, devices: Device_, fleet: list[Device], admin_user: Any) -> None:
    fuzz(bridge, devices, fleet, examples=1200)
    assert_the_fleet_goes_on(bridge, devices, fleet, admin_user)

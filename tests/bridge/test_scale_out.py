"""Scale-out on one machine: two bridges on the shared subscription, two workers on the task queue.

The production stack of tests/stack.py with a second bridge and a second
worker, each under its own name and probe port. Devices enrolled through the
API (their broker accounts made by the web process) publish a known set of
records and events; both bridges take a share, every record and event is
stored once and acknowledged. Then one bridge is killed with SIGKILL in the
middle of a stream: the other keeps the shared subscription, and the devices'
resend of what was not acknowledged (the agent's outbox keeps a record until
an ack covers it) leaves every record stored, once. Last, both workers run
rollups side by side over the same rows, and the rollups count every window
and heartbeat once.

In ``make chaos``: the stack's start alone takes a minute on two cores, and
``make test`` keeps the deploy smoke test's stack as its one production
start; tests/bridge/test_redelivery.py and test_lock_order.py hold the same
properties there with one bridge in-process.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any, Literal

import paho.mqtt.client as mqtt
import psycopg
import pytest
from celery import Celery
from paho.mqtt.enums import CallbackAPIVersion

from agent.kernel import protocol
from tests.stack import Stack, http, missing_services, production_stack

pytestmark = [pytest.mark.integration, pytest.mark.chaos]

REDIS_URL = "redis://127.0.0.1:6379/10"
DEVICES = 8
RECORDS_PER_MESSAGE = 5
SETTLE_S = 10  # telemetry.rollups.SETTLE: a run reads records received at least this long ago


class Device:
    """An enrolled device on its own MQTT connection: sends records, keeps what is not acknowledged yet.

    Like the agent's outbox, a record stays here until an ack covers it, and
    ``resend`` sends again whatever is not covered.
    """

    def __init__(self, stack: Stack, identity: protocol.EnrollmentAnswer) -> None:
        self.device_id = identity.device_id
        self.seq = 0
        self.acks: list[int] = []
        self.unacked: dict[int, protocol.TelemetryRecord] = {}
        self.events = 0
        self._lock = threading.Lock()
        subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=identity.device_id)
        self.client.username_pw_set(identity.device_id, identity.secret)
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.connect(stack.broker.host, stack.broker.port)
        self.client.loop_start()
        self.client.subscribe(protocol.topic(self.device_id, "ack"), qos=1)
        assert subscribed.wait(10), f"{self.device_id} could not subscribe to its acks"

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        ack = json.loads(message.payload)["seq"]
        with self._lock:
            self.acks.append(ack)
            for seq in [s for s in self.unacked if s <= ack]:
                del self.unacked[seq]

    @property
    def acked(self) -> int:
        with self._lock:
            return max(self.acks, default=0)

    def send(self, records: int) -> mqtt.MQTTMessageInfo:
        """One telemetry message of new records: a heartbeat, then windows."""
        now = datetime.now(timezone.utc)
        batch = []
        for i in range(records):
            self.seq += 1
            kind: Literal["heartbeat", "window"] = "heartbeat" if i == 0 else "window"
            batch.append(protocol.TelemetryRecord(seq=self.seq, kind=kind, ts=now, data=_data(kind, now)))
        with self._lock:
            self.unacked.update((r.seq, r) for r in batch)
        return self._publish(batch)

    def send_event(self) -> mqtt.MQTTMessageInfo:
        self.events += 1
        event = protocol.Event(kind="camera.reconnected", data={"n": self.events})
        return self.client.publish(protocol.topic(self.device_id, "events"), protocol.encode(event), qos=1)

    def resend(self) -> int:
        """Send again every record no ack covers; returns how many."""
        with self._lock:
            pending = [self.unacked[s] for s in sorted(self.unacked)]
        for start in range(0, len(pending), protocol.MAX_BATCH_RECORDS):
            self._publish(pending[start : start + protocol.MAX_BATCH_RECORDS]).wait_for_publish(10)
        return len(pending)

    def _publish(self, records: list[protocol.TelemetryRecord]) -> mqtt.MQTTMessageInfo:
        message = protocol.encode(protocol.Telemetry(records=records))
        return self.client.publish(protocol.topic(self.device_id, "telemetry"), message, qos=1)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _data(kind: str, now: datetime) -> dict[str, Any]:
    if kind == "heartbeat":
        return {
            "agent_version": "0.1.0",
            "uptime_s": 10.0,
            "cpu_percent": 20.0,
            "memory_percent": 30.0,
            "disk_percent": 40.0,
            "disk_free_bytes": 10**9,
        }
    start = now - timedelta(seconds=10)
    return {
        "start": start.isoformat(),
        "end": now.isoformat(),
        "model_name": "detector",
        "model_version": "1.0.0",
        "frames": 100,
        "classes": {"ok": 97, "defect": 3},
    }


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    reason = missing_services(REDIS_URL)
    if reason:
        pytest.skip(reason)
    # Nothing left queued by an interrupted run: every task counted here is one this test sent.
    Celery(broker=REDIS_URL).control.purge()
    # No beat: the tasks each worker runs are the ones this test sends.
    with production_stack(
        tmp_path_factory.mktemp("scale"), processes=("web", "bridge", "worker"), redis_url=REDIS_URL
    ) as running:
        running.start_role("bridge", "bridge-2")
        running.start_role("worker", "worker-2")
        running.wait_ready()
        yield running


@pytest.fixture(scope="module")
def devices(stack: Stack) -> Iterator[list[Device]]:
    assert stack.api("/api/v1/sites/", {"slug": "plant", "name": "Plant", "timezone": "UTC"})[0] == 201
    enrolled = []
    for i in range(DEVICES):
        status, token = stack.api("/api/v1/sites/plant/enrollment-tokens/", {})
        assert status == 201, token
        status, answer = stack.api("/api/v1/enroll", {"token": token["token"], "name": f"cam-{i}"}, token="")
        assert status == 201, answer
        enrolled.append(Device(stack, protocol.EnrollmentAnswer.model_validate(answer)))
    yield enrolled
    for device in enrolled:
        device.close()


def metric(stack: Stack, name: str, line: str) -> float:
    """One sample of a process's /metrics, 0 when absent."""
    status, body = http(f"{stack.probes[name]}/metrics", headers={"Authorization": f"Bearer {stack.metrics_token}"})
    assert status == 200, body
    found = re.search(rf"^{re.escape(line)} (\S+)$", body, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def bridge_records(stack: Stack, name: str) -> float:
    return metric(stack, name, "edgefleet_bridge_records_total")


def wait_until(predicate: Any, timeout: float, message: Any) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(message() if callable(message) else message)
        time.sleep(0.1)


def all_acked(devices: list[Device]) -> bool:
    return all(d.acked == d.seq for d in devices)


def stored(stack: Stack) -> dict[str, tuple[int, int, int, int]]:
    """Per device: records stored, distinct seqs, highest seq, and the acknowledged watermark."""
    with psycopg.connect(stack.database_url) as conn:
        rows = conn.execute(
            "SELECT d.device_id, count(r.id), count(DISTINCT r.seq), coalesce(max(r.seq), 0), d.telemetry_acked_seq "
            "FROM fleet_device d LEFT JOIN telemetry_telemetryrecord r ON r.device_id = d.id "
            "GROUP BY d.id"
        ).fetchall()
    return {row[0]: row[1:] for row in rows}


def events_stored(stack: Stack) -> dict[str, int]:
    with psycopg.connect(stack.database_url) as conn:
        rows = conn.execute(
            "SELECT d.device_id, count(e.id) FROM fleet_device d "
            "LEFT JOIN telemetry_deviceevent e ON e.device_id = d.id GROUP BY d.id"
        ).fetchall()
    return dict(rows)


def assert_each_record_stored_once(stack: Stack, devices: list[Device]) -> None:
    expected = {d.device_id: (d.seq, d.seq, d.seq, d.seq) for d in devices}
    assert stored(stack) == expected
    assert events_stored(stack) == {d.device_id: d.events for d in devices}


def test_two_bridges_share_the_devices_and_store_each_record_once(stack: Stack, devices: list[Device]) -> None:
    before = {name: bridge_records(stack, name) for name in ("bridge", "bridge-2")}
    infos = []
    for _ in range(25):
        for device in devices:
            infos.append(device.send(RECORDS_PER_MESSAGE))
    for device in devices:
        infos += [device.send_event(), device.send_event()]
    for info in infos:
        info.wait_for_publish(10)
    wait_until(lambda: all_acked(devices), 20, lambda: (stored(stack), stack.log("bridge"), stack.log("bridge-2")))
    wait_until(
        lambda: events_stored(stack) == {d.device_id: d.events for d in devices}, 10, lambda: events_stored(stack)
    )

    assert_each_record_stored_once(stack, devices)
    # Acks only move forward on the device, and the last one names its last record.
    assert all(d.acks and max(d.acks) == d.seq and not d.unacked for d in devices)
    took = {name: bridge_records(stack, name) - before[name] for name in before}
    sent = sum(d.seq for d in devices)
    assert all(share > 0 for share in took.values()), took
    # Each message reached one bridge: the shares add up to what was sent, no more.
    assert sum(took.values()) == sent, (took, sent)
    events = {name: metric(stack, name, 'edgefleet_bridge_messages_total{kind="event"}') for name in before}
    assert sum(events.values()) == 2 * len(devices), events


def test_the_other_bridge_takes_over_when_one_is_killed_mid_stream(stack: Stack, devices: list[Device]) -> None:
    first = {d.device_id: d.seq for d in devices}
    survivor_before = bridge_records(stack, "bridge")
    infos = []
    for round_ in range(40):
        for device in devices:
            infos.append(device.send(RECORDS_PER_MESSAGE))
        if round_ == 12:
            stack.kill("bridge-2")
        time.sleep(0.02)
    for info in infos:
        info.wait_for_publish(10)
    # What the killed bridge had received and not stored is not acknowledged:
    # once the acks stop moving, the devices send it again, as the agent's
    # outbox does after its ack timeout.
    missing: list[int] = []
    deadline = time.monotonic() + 25
    while not all_acked(devices) and time.monotonic() < deadline:
        settled = [d.acked for d in devices]
        time.sleep(1.0)
        if [d.acked for d in devices] == settled:
            missing.append(sum(d.resend() for d in devices))
    assert all_acked(devices), (stored(stack), stack.log("bridge"))
    print("records not acknowledged after the kill, sent again per round:", missing)

    assert_each_record_stored_once(stack, devices)
    took = bridge_records(stack, "bridge") - survivor_before
    # The survivor stored everything sent after the kill, and at least its share before it.
    assert took >= sum(d.seq - first[d.device_id] for d in devices) / 2, took
    assert stack.processes["bridge"].poll() is None


def one_row(conn: psycopg.Connection[tuple[Any, ...]], sql: str) -> tuple[Any, ...]:
    row = conn.execute(sql).fetchone()
    assert row is not None
    return row


def test_two_workers_run_the_rollups_side_by_side_and_count_each_record_once(
    stack: Stack, devices: list[Device]
) -> None:
    # A rollup run reads records received SETTLE_S ago: wait until the last one is that old.
    with psycopg.connect(stack.database_url) as conn:
        (newest,) = one_row(conn, "SELECT max(received_at) FROM telemetry_telemetryrecord")
    time.sleep(max(0.0, newest.timestamp() + SETTLE_S + 0.5 - time.time()))
    celery = Celery(broker=REDIS_URL)
    tasks = 6
    for _ in range(tasks):
        celery.send_task("telemetry.tasks.roll_up")
    line = 'edgefleet_celery_tasks_total{state="SUCCESS",task="telemetry.tasks.roll_up"}'
    wait_until(
        lambda: sum(metric(stack, w, line) for w in ("worker", "worker-2")) >= tasks,
        30,
        lambda: stack.log("worker") + stack.log("worker-2"),
    )
    ran = {w: metric(stack, w, line) for w in ("worker", "worker-2")}
    assert sum(ran.values()) == tasks and all(ran.values()), ran

    with psycopg.connect(stack.database_url) as conn:
        windows, heartbeats = one_row(
            conn,
            "SELECT count(*) FILTER (WHERE kind = 'window'), count(*) FILTER (WHERE kind = 'heartbeat') "
            "FROM telemetry_telemetryrecord",
        )
        (rolled_windows,) = one_row(
            conn, "SELECT sum(windows) FROM telemetry_windowrollup WHERE resolution = '1m' AND scope = 'device'"
        )
        (rolled_heartbeats,) = one_row(
            conn, "SELECT sum(heartbeats) FROM telemetry_heartbeatrollup WHERE resolution = '1m'"
        )
        quarantined = conn.execute("SELECT ref, reason, detail FROM telemetry_quarantine").fetchall()
    # Every record sent is older than the settling time, so every one is rolled up, once.
    assert (rolled_windows, rolled_heartbeats, quarantined) == (windows, heartbeats, [])
    assert windows == sum(d.seq for d in devices) * (RECORDS_PER_MESSAGE - 1) // RECORDS_PER_MESSAGE

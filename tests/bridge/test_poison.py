"""One message must never stop the fleet: wrong clocks, bugs in the batch path, a worker thread that dies.

Each test names what the bridge did before, as an outside tester found it.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from typing import Any
from unittest import mock

import paho.mqtt.client as mqtt
import pytest

from bridge.process import Bridge, BridgeConfig
from fleet.models import Device, Site
from telemetry import exporter
from telemetry.models import DeviceClock, DeviceEvent, Resolution, Scope, TelemetryRecord, WindowRollup
from tests.bridge.helpers import offline_bridge, published, topic
from tests.payloads import heartbeat_data, window_data
from tests.telemetry.factories import roll_up_everything

pytestmark = pytest.mark.django_db

WIDE = timedelta(days=366)  # the bridge's default BRIDGE_CLOCK_MAX_AHEAD_S


@pytest.fixture
def devices(site: Site, enroll_device: Callable[..., Any]) -> tuple[Device, Device]:
    return enroll_device(site, name="ahead").device, enroll_device(site, name="sound").device


def telemetry(*records: dict[str, Any]) -> bytes:
    return json.dumps({"v": 1, "type": "telemetry", "records": list(records)}).encode()


def beat(seq: int, ts: datetime, **data: Any) -> dict[str, Any]:
    return {"seq": seq, "kind": "heartbeat", "ts": ts.isoformat(), "data": heartbeat_data(**data)}


def test_a_heartbeat_from_a_clock_ahead_does_not_freeze_the_devices_last_heartbeat(
    devices: tuple[Device, Device],
) -> None:
    """As found: a heartbeat dated a day ahead became last_heartbeat, and every later
    heartbeat (dated right) was older than it, so the device's state froze for a day;
    one dated years ahead, for good."""
    device = devices[0]
    bridge = offline_bridge(max_ahead=WIDE)
    now = datetime.now(timezone.utc)
    ahead = telemetry(beat(1, now + timedelta(days=1), cpu_percent=99.0))
    assert bridge.handle(topic(device.device_id, "telemetry"), ahead) == "ok"
    # The clock is right again: its heartbeat, sent after, is the device's state.
    right = telemetry(beat(2, datetime.now(timezone.utc), cpu_percent=7.0))
    assert bridge.handle(topic(device.device_id, "telemetry"), right) == "ok"

    device.refresh_from_db()
    assert device.last_heartbeat["cpu_percent"] == 7.0
    record = TelemetryRecord.objects.get(device=device, seq=1)
    assert record.device_ts == now + timedelta(days=1)
    assert abs(record.recorded_at - record.received_at) < timedelta(seconds=5)
    clock = DeviceClock.objects.get(device=device)
    assert clock.restamped == 1 and clock.offset_s == pytest.approx(86400, abs=60)
    assert bridge.restamped == 1
    assert [seq for _, ack in published(bridge, "ack") for seq in [ack["seq"]]] == [1, 2]


def test_a_heartbeat_minutes_ahead_holds_off_no_later_heartbeat(devices: tuple[Device, Device]) -> None:
    """Found by the fuzz: a heartbeat dated 4 minutes ahead (inside the clock tolerance,
    so stored at its own time) stayed the device's state until those minutes had passed."""
    device = devices[0]
    bridge = offline_bridge()
    ahead = telemetry(beat(1, datetime.now(timezone.utc) + timedelta(minutes=4), cpu_percent=99.0))
    assert bridge.handle(topic(device.device_id, "telemetry"), ahead) == "ok"
    right = telemetry(beat(2, datetime.now(timezone.utc), cpu_percent=7.0))
    assert bridge.handle(topic(device.device_id, "telemetry"), right) == "ok"
    device.refresh_from_db()
    assert device.last_heartbeat["cpu_percent"] == 7.0


def test_windows_from_a_clock_ahead_are_rolled_up_when_they_arrived(devices: tuple[Device, Device]) -> None:
    """As found: a window dated a day ahead went into a bucket a day ahead, where no chart
    or rule looks until the day has passed."""
    device = devices[0]
    bridge = offline_bridge(max_ahead=WIDE)
    ahead = datetime.now(timezone.utc) + timedelta(days=1)
    record = {"seq": 1, "kind": "window", "ts": ahead.isoformat(), "data": window_data(ahead, [20.0] * 4, [0.9] * 4)}
    assert bridge.handle(topic(device.device_id, "telemetry"), telemetry(record)) == "ok"

    roll_up_everything()

    (row,) = WindowRollup.objects.filter(resolution=Resolution.MINUTE, scope=Scope.DEVICE, key=device.device_id)
    assert row.frames == 4 and row.bucket <= datetime.now(timezone.utc)


def test_an_event_from_a_clock_ahead_is_stored_at_the_receiving_time(devices: tuple[Device, Device]) -> None:
    device = devices[0]
    bridge = offline_bridge(max_ahead=WIDE)
    ahead = datetime.now(timezone.utc) + timedelta(days=30)
    event = json.dumps({"v": 1, "type": "event", "kind": "model_swap", "ts": ahead.isoformat()}).encode()
    assert bridge.handle(topic(device.device_id, "events"), event) == "ok"
    (stored,) = DeviceEvent.objects.filter(device=device)
    assert stored.at <= datetime.now(timezone.utc)
    assert DeviceClock.objects.get(device=device).offset_s > 29 * 86400


def test_a_message_that_raises_in_the_batch_path_costs_only_itself(devices: tuple[Device, Device]) -> None:
    """As found: anything but a DatabaseError raised out of handle_many and ended the
    worker thread, and with it every message queued behind it."""
    ahead, sound = devices
    bridge = offline_bridge()
    now = datetime.now(timezone.utc)
    real_admit = Bridge._admit

    def admit(self: Bridge, device_id: str, topic_: str, known: dict[str, Device]) -> Device | str:
        if device_id == ahead.device_id:
            raise RuntimeError("a bug of ours")
        return real_admit(self, device_id, topic_, known)

    items = [
        (topic(sound.device_id, "telemetry"), telemetry(beat(1, now))),
        (topic(ahead.device_id, "telemetry"), telemetry(beat(1, now))),
        (topic(sound.device_id, "telemetry"), telemetry(beat(2, now))),
    ]
    with mock.patch.object(Bridge, "_admit", autospec=True, side_effect=admit):
        verdicts = bridge.handle_many(items)

    assert verdicts == ["ok", "internal_error", "ok"]
    assert bridge.rejected == {"internal_error": 1}
    assert list(TelemetryRecord.objects.filter(device=sound).values_list("seq", flat=True).order_by("seq")) == [1, 2]


# --- the worker threads --------------------------------------------------------------------


@pytest.fixture
def running() -> Iterator[Bridge]:
    """A started bridge whose broker never answers: its workers read what paho's callback queues."""
    bridge = Bridge(BridgeConfig(url="mqtt://127.0.0.1:1", workers=1, stats_interval_s=0.0))
    bridge.client.publish = mock.create_autospec(bridge.client.publish)  # type: ignore[method-assign]
    yield bridge
    bridge.stop()


def deliver(bridge: Bridge, device_id: str, suffix: str, payload: bytes) -> None:
    """What paho's network thread does with a message that arrives."""
    message = mqtt.MQTTMessage(topic=topic(device_id, suffix).encode())
    message.payload = payload
    bridge._on_message(bridge.client, None, message)


def stored(device: Device) -> list[int]:
    return list(TelemetryRecord.objects.filter(device=device).values_list("seq", flat=True).order_by("seq"))


@pytest.mark.django_db(transaction=True)
def test_the_worker_goes_on_after_an_exception_around_the_batch(
    running: Bridge, site: Site, enroll_device: Callable[..., Any]
) -> None:
    """As found: an exception outside handle_many's own checks ended the worker thread
    silently; its devices' telemetry was dropped from then on while the process lived."""
    device = enroll_device(site).device
    now = datetime.now(timezone.utc)
    with mock.patch("bridge.process.close_old_connections", autospec=True, side_effect=[RuntimeError, None, None]):
        running.start()
        deliver(running, device.device_id, "telemetry", telemetry(beat(1, now)))
        assert running.wait_for(lambda b: b.rejected["internal_error"] == 1, timeout=10)
        deliver(running, device.device_id, "telemetry", telemetry(beat(2, now)))
        assert running.wait_for(lambda b: b.accepted["telemetry"] == 1, timeout=10)
    assert stored(device) == [2]
    assert all(running.workers_alive().values())


@pytest.mark.django_db(transaction=True)
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_worker_thread_that_dies_is_restarted_and_counted(
    running: Bridge, site: Site, enroll_device: Callable[..., Any]
) -> None:
    """As found: nothing watched the worker threads; one that ended left its share of the
    fleet unread, and the bridge's liveness metric kept advancing all the same."""
    device = enroll_device(site).device
    real_drain = Bridge._drain
    calls: list[int] = []

    def dies_once(self: Bridge, inbox: Any) -> None:
        calls.append(1)
        if len(calls) == 1:
            raise SystemExit("a bug in the loop itself")
        real_drain(self, inbox)

    with mock.patch.object(Bridge, "_drain", dies_once):
        running.start()
        deadline = time.monotonic() + 10
        while any(running.workers_alive().values()) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert running.workers_alive() == {"bridge-worker-0": False}

        assert running.supervise() == ["bridge-worker-0"]

        deliver(running, device.device_id, "telemetry", telemetry(beat(1, datetime.now(timezone.utc))))
        assert running.wait_for(lambda b: b.accepted["telemetry"] == 1, timeout=10)
    assert running.worker_restarts == {"bridge-worker-0": 1}
    running.export_stats()
    labels = f'{{bridge="{running.client_id}",worker="bridge-worker-0"}}'
    assert f"edgefleet_bridge_worker_restarts_total{labels} 1" in exporter.render()


@pytest.mark.django_db(transaction=True)
def test_each_worker_marks_its_progress_even_when_idle(running: Bridge) -> None:
    running.start()
    first = dict(running.worker_progress)
    time.sleep(1.5)
    assert running.worker_progress["bridge-worker-0"] > first["bridge-worker-0"]
    running.export_stats()
    labels = f'{{bridge="{running.client_id}",worker="bridge-worker-0"}}'
    series = f"edgefleet_bridge_worker_last_progress_timestamp_seconds{labels}"
    (line,) = [line for line in exporter.render().splitlines() if line.startswith(series)]
    assert float(line.split()[-1]) == pytest.approx(time.time(), abs=10)


@pytest.mark.django_db(transaction=True)
def test_a_stuck_worker_stops_marking_progress(devices: tuple[Device, Device]) -> None:
    """The per-worker time is what shows a worker stuck in a call: it stops while the process goes on."""
    bridge = Bridge(BridgeConfig(url="mqtt://127.0.0.1:1", workers=1))
    release = threading.Event()
    with mock.patch.object(Bridge, "handle_many", autospec=True, side_effect=lambda *_: release.wait(10) and []):
        bridge._start_worker("bridge-worker-0", bridge._inboxes[0])
        deliver(bridge, devices[0].device_id, "status", b"{}")
        time.sleep(1.5)
        stuck_since = bridge.worker_progress["bridge-worker-0"]
        assert time.time() - stuck_since >= 1.0
        release.set()
    bridge._inboxes[0].put(None)
    # The worker writes its counters on its own connection: it ends before the test's flush.
    worker, _ = bridge._workers["bridge-worker-0"]
    worker.join(10)
    assert not worker.is_alive()

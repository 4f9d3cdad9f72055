"""A control plane in miniature, shared by the agent tests and the benchmarks (no Django, no database).

``TelemetryStore`` keeps what the bridge keeps of a device's telemetry: each
record once, de-duplicated on seq, and the highest contiguous seq stored,
stepping over what the device's ``floor`` says it dropped. That is the ack
the control plane sends, and the only thing that lets the device delete
records. ``MqttControlPlane`` puts one on a broker: it takes a device's
telemetry and publishes the acks.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from agent.config import MqttSettings
from agent.kernel import protocol

NewRecord = Callable[[int, dict[str, Any]], None]


class TelemetryStore:
    """Stores records de-duplicated on seq and knows the highest contiguous seq; safe across threads."""

    def __init__(self, on_record: NewRecord | None = None) -> None:
        self.records: dict[int, dict[str, Any]] = {}
        """seq -> data, as first delivered."""
        self.deliveries = 0
        self.conflicts: list[int] = []
        """Seqs delivered again with other data: a seq the device reused."""
        self.floor = 1
        self.contiguous = 0
        self.changed = threading.Condition()
        self._on_record = on_record

    @property
    def stored(self) -> set[int]:
        with self.changed:
            return set(self.records)

    def receive(self, batch: protocol.Telemetry) -> int:
        """Store a batch; returns the ack: the highest contiguous seq stored (0 while there is none)."""
        with self.changed:
            for record in batch.records:
                self.deliveries += 1
                if record.seq not in self.records:
                    self.records[record.seq] = record.data
                    if self._on_record is not None:
                        self._on_record(record.seq, record.data)
                elif self.records[record.seq] != record.data:
                    self.conflicts.append(record.seq)
            if batch.floor:
                self.floor = max(self.floor, batch.floor)
            self.contiguous = max(self.contiguous, self.floor - 1)
            while self.contiguous + 1 in self.records:
                self.contiguous += 1
            self.changed.notify_all()
            return self.contiguous

    def wait_until(self, predicate: Callable[[TelemetryStore], bool], timeout: float) -> bool:
        with self.changed:
            return self.changed.wait_for(lambda: predicate(self), timeout)

    def wait_for(self, seq: int, timeout: float) -> bool:
        """Wait until every seq up to ``seq`` is stored (or stepped over)."""
        return self.wait_until(lambda store: store.contiguous >= seq, timeout)


class MqttControlPlane:
    """A ``TelemetryStore`` on a broker: subscribes to one device's telemetry and publishes its acks."""

    def __init__(self, url: str, device_id: str, *, store: TelemetryStore | None = None, timeout: float = 10) -> None:
        self.device_id = device_id
        self.store = store or TelemetryStore()
        settings = MqttSettings(url=url)
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"cloud-{uuid.uuid4().hex[:8]}")
        self.client.on_message = self._on_message
        subscribed = threading.Event()
        # Ready once the broker confirms the subscription: a batch published before would pass us by.
        self.client.on_subscribe = lambda *args: subscribed.set()
        self.client.connect(settings.host, settings.port)
        self.client.subscribe(protocol.topic(device_id, "telemetry"), qos=1)
        self.client.loop_start()
        if not subscribed.wait(timeout):
            self.close()
            raise RuntimeError(f"the stand-in control plane could not subscribe on {url}")

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        batch = protocol.decode("telemetry", message.payload)
        if not isinstance(batch, protocol.Telemetry):
            raise TypeError(f"not telemetry: {type(batch).__name__}")
        ack = self.store.receive(batch)
        if ack:
            client.publish(protocol.topic(self.device_id, "ack"), protocol.encode(protocol.Ack(seq=ack)), qos=1)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

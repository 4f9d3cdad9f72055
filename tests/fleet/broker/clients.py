"""A small paho client for ACL tests: it records what the broker answered and what arrived."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.reasoncodes import ReasonCode

TIMEOUT = 10


class Probe:
    def __init__(
        self, url: str, username: str | None, password: str | None, *, client_id: str = "", v5: bool = False
    ) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 1883
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id or (username or ""),
            protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
        )
        if username is not None:
            self.client.username_pw_set(username, password)
        self.client.reconnect_delay_set(60, 120)  # tests decide when to reconnect
        self.changed = threading.Condition()
        self.connack: ReasonCode | None = None
        self.disconnected: ReasonCode | None = None
        self.messages: list[tuple[str, bytes, bool]] = []
        self.subacks: dict[int, list[ReasonCode]] = {}
        self.pubacks: dict[int, ReasonCode] = {}
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        self.client.on_publish = self._on_publish

    # --- callbacks -----------------------------------------------------------

    def _note(self, change: Callable[[], None]) -> None:
        with self.changed:
            change()
            self.changed.notify_all()

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: ReasonCode, props: Any) -> None:
        self._note(lambda: setattr(self, "connack", reason))

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason: ReasonCode, props: Any) -> None:
        self._note(lambda: setattr(self, "disconnected", reason))

    def _on_message(self, client: Any, userdata: Any, message: mqtt.MQTTMessage) -> None:
        self._note(lambda: self.messages.append((message.topic, message.payload, bool(message.retain))))

    def _on_subscribe(self, client: Any, userdata: Any, mid: int, reasons: list[ReasonCode], props: Any) -> None:
        self._note(lambda: self.subacks.__setitem__(mid, list(reasons)))

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason: ReasonCode, props: Any) -> None:
        self._note(lambda: self.pubacks.__setitem__(mid, reason))

    # --- actions -------------------------------------------------------------

    def wait(self, predicate: Callable[[], bool], timeout: float = TIMEOUT) -> bool:
        with self.changed:
            return self.changed.wait_for(predicate, timeout)

    def connect(self) -> ReasonCode:
        """Connect and return the CONNACK reason (a refusal included)."""
        self.connack = self.disconnected = None
        self.client.connect(self.host, self.port, keepalive=30)
        self.client.loop_start()
        assert self.wait(lambda: self.connack is not None), "no CONNACK"
        assert self.connack is not None
        return self.connack

    def subscribe(self, topic: str) -> ReasonCode:
        result, mid = self.client.subscribe(topic, qos=1)
        assert result == mqtt.MQTT_ERR_SUCCESS
        assert self.wait(lambda: mid in self.subacks), f"no SUBACK for {topic}"
        return self.subacks[mid][0]

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> ReasonCode:
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        assert self.wait(lambda: info.mid in self.pubacks), f"no PUBACK for {topic}"
        return self.pubacks[info.mid]

    def received(self, topic: str) -> list[bytes]:
        with self.changed:
            return [payload for t, payload, _ in self.messages if t == topic]

    def wait_for_message(self, topic: str, payload: bytes) -> bool:
        return self.wait(lambda: any(t == topic and p == payload for t, p, _ in self.messages))

    def wait_disconnected(self) -> bool:
        return self.wait(lambda: self.disconnected is not None)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

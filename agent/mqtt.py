"""The device's MQTT link: presence, subscriptions and validated delivery of what arrives.

Habits (STYLE.md 12): paho 2.x with ``CallbackAPIVersion.VERSION2`` over MQTT
3.1.1 (the embedded broker speaks nothing newer); a retained ``offline`` last
will; ``online`` and the subscriptions are (re)done in ``on_connect`` so a
reconnect restores everything; paho's own reconnect backoff, no second
reconnect thread; callbacks that are harmless when called twice.

paho's network thread only decodes and hands messages to ``on_message``;
the runtime does the work on its own thread.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from agent import __version__
from agent.config import MqttSettings
from agent.kernel import protocol

log = logging.getLogger(__name__)

SUBSCRIPTIONS = protocol.CLOUD_TO_DEVICE


class Link:
    """One MQTT connection for one device."""

    def __init__(
        self,
        settings: MqttSettings,
        *,
        device_id: str,
        secret: str,
        on_message: Callable[[str, protocol.Message], None],
        on_connected: Callable[[], None] | None = None,
        agent_version: str = __version__,
    ) -> None:
        self.settings = settings
        self.device_id = device_id
        self.agent_version = agent_version
        self.on_message = on_message
        self.on_connected = on_connected
        self.connected = threading.Event()
        # Set once the broker confirmed the subscriptions of the current connection.
        self.subscribed = threading.Event()
        self.rejected = 0
        self._stopping = threading.Event()
        self._was_connected = False
        # Client id = username = device id: the broker's ACLs key on it, and a
        # second process with the same identity takes the session over.
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=device_id, protocol=mqtt.MQTTv311, clean_session=True
        )
        self.client.username_pw_set(device_id, secret)
        if settings.tls:
            # No CA file: the system's trust roots, as for any public server.
            self.client.tls_set(ca_certs=str(settings.ca_file) if settings.ca_file else None)
        self.client.will_set(protocol.topic(device_id, "status"), protocol.OFFLINE_WILL, qos=1, retain=True)
        self.client.reconnect_delay_set(min_delay=settings.reconnect_min_s, max_delay=settings.reconnect_max_s)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe

    # --- lifecycle -------------------------------------------------------------

    def start(self) -> None:
        """Connect in the background; paho retries with backoff until the broker answers."""
        self.client.connect_async(self.settings.host, self.settings.port, self.settings.keepalive)
        self.client.loop_start()

    def stop(self, timeout: float = 5.0) -> None:
        """Say ``offline`` (retained) and disconnect; the will is not sent on a clean disconnect."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        if self.connected.is_set():
            info = self.publish("status", protocol.Status(state="offline", ts=protocol.utcnow()), retain=True)
            info.wait_for_publish(timeout)
            if not info.is_published():
                log.warning("offline not confirmed", extra={"timeout_s": timeout})
        self.client.disconnect()
        self.client.loop_stop()
        self.connected.clear()
        self.subscribed.clear()

    # --- outgoing --------------------------------------------------------------

    def publish(self, suffix: str, message: Any, *, retain: bool = False) -> mqtt.MQTTMessageInfo:
        payload = protocol.encode(message)
        return self.client.publish(protocol.topic(self.device_id, suffix), payload, qos=1, retain=retain)

    def publish_raw(self, suffix: str, payload: bytes) -> mqtt.MQTTMessageInfo:
        """Publish an already encoded message (telemetry batches are encoded once by the outbox)."""
        return self.client.publish(protocol.topic(self.device_id, suffix), payload, qos=1)

    # --- paho callbacks (network thread) -----------------------------------------

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            # Bad credentials or a revoked device: paho keeps retrying with
            # backoff, which is right for a broker that is restarting.
            log.error("connect refused", extra={"broker": self.settings.url, "reason": str(reason)})
            return
        online = protocol.Status(state="online", ts=protocol.utcnow(), agent_version=self.agent_version)
        client.publish(protocol.topic(self.device_id, "status"), protocol.encode(online), qos=1, retain=True)
        client.subscribe([(protocol.topic(self.device_id, suffix), 1) for suffix in SUBSCRIPTIONS])
        log.info(
            "reconnected" if self._was_connected else "connected",
            extra={"broker": self.settings.url, "device": self.device_id},
        )
        self._was_connected = True
        self.connected.set()
        if self.on_connected is not None:
            self.on_connected()

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reasons: Any, props: Any) -> None:
        refused = [str(r) for r in reasons if r.is_failure]
        if refused:
            # The broker's ACL refused a topic of our own: a broker misconfiguration worth an error.
            log.error("subscribe refused", extra={"reasons": ",".join(refused)})
            return
        self.subscribed.set()

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        was = self.connected.is_set()
        self.connected.clear()
        self.subscribed.clear()
        if self._stopping.is_set():
            log.info("disconnected", extra={"reason": "stop"})
        elif was:
            log.info("disconnected", extra={"reason": str(reason), "note": "paho reconnects with backoff"})

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        try:
            device_id, suffix = protocol.parse_topic(message.topic)
            if device_id != self.device_id or suffix not in SUBSCRIPTIONS:
                raise protocol.ProtocolError("wrong_topic", message.topic[:200])
            if not message.payload:
                # An empty retained payload clears a retained message; nothing to act on.
                return
            decoded = protocol.decode(suffix, bytes(message.payload))
        except protocol.ProtocolError as exc:
            self.rejected += 1
            log.warning(
                "message rejected", extra={"topic": message.topic[:200], "reason": exc.reason, "detail": exc.detail}
            )
            return
        self.on_message(suffix, decoded)

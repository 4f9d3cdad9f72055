"""What the bridge's publishing threads share: poll the database while connected, publish what is pending."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import paho.mqtt.client as mqtt
from django.db import DatabaseError, close_old_connections, connection

log = logging.getLogger(__name__)

Publish = Callable[..., mqtt.MQTTMessageInfo]


class PendingPublisher:
    """Every ``poll_s`` while the broker is connected, ``publish_pending``; ``run`` is the thread's body.

    A database error costs one poll, never the thread; the thread's connection is closed when it ends.
    """

    what = "pending rows"
    """Named in the log when a poll fails."""
    default_batch = 500

    def __init__(self, publish: Publish, *, poll_s: float = 1.0, batch: int | None = None) -> None:
        self._publish = publish
        self.poll_s = poll_s
        self.batch = batch or self.default_batch

    def run(self, stopping: threading.Event, connected: threading.Event) -> None:
        try:
            while not stopping.wait(self.poll_s):
                if not connected.is_set():
                    continue
                try:
                    close_old_connections()
                    self.publish_pending()
                except DatabaseError:
                    log.exception("could not read %s; retrying", self.what)
                except Exception:
                    # Whatever one poll raises costs that poll: a dead thread would publish nothing again
                    # while the process looked alive (what is pending stays pending and goes next time).
                    log.exception("could not publish %s; retrying", self.what)
        finally:
            connection.close()

    @staticmethod
    def sent(info: mqtt.MQTTMessageInfo, timeout: float = 10.0) -> bool:
        """Whether a publish reached the broker within ``timeout``; never raises.

        paho refuses to queue a message when its outgoing queue is full or the
        message id it would take is still in flight (16-bit ids wrap under a
        heavy publish load, the bridge's acks included), and when the
        connection is gone. The row is then left pending for the next poll.
        """
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            log.warning("publish not queued, left pending", extra={"rc": mqtt.error_string(info.rc)})
            return False
        try:
            info.wait_for_publish(timeout=timeout)
        except (ValueError, RuntimeError):
            return False
        return info.is_published()

    def publish_pending(self) -> int:
        raise NotImplementedError

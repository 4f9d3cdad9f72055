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
        finally:
            connection.close()

    def publish_pending(self) -> int:
        raise NotImplementedError

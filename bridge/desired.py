"""Desired state out: every device's newest signed document, published retained on its ``desired`` topic.

The bridge publishes; it never decides what a device should run. The
document is built and signed by the control plane when it changes, and
published here once per generation: ``Device.published_generation`` records
the newest one the broker confirmed, so a restart publishes only what is
pending and several bridges side by side only ever move it forward.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from django.db import DatabaseError, close_old_connections, connection
from django.db.models import F
from pydantic import ValidationError

from agent.kernel import protocol
from fleet.models import Device
from registry.signing import sign_desired

log = logging.getLogger(__name__)

Publish = Callable[..., mqtt.MQTTMessageInfo]


class DesiredPublisher:
    """Publishes pending desired documents; ``run`` is the bridge's ``bridge-desired`` thread."""

    def __init__(self, publish: Publish, *, poll_s: float = 1.0, batch: int = 500) -> None:
        self._publish = publish
        self.poll_s = poll_s
        self.batch = batch

    def run(self, stopping: threading.Event, connected: threading.Event) -> None:
        try:
            while not stopping.wait(self.poll_s):
                if not connected.is_set():
                    continue
                try:
                    close_old_connections()
                    self.publish_pending()
                except DatabaseError:
                    log.exception("could not read desired states; retrying")
        finally:
            connection.close()

    def publish_pending(self) -> int:
        """Publish, retained, every desired document newer than the last one published."""
        pending = Device.objects.filter(desired_generation__gt=F("published_generation"), revoked_at__isnull=True)
        count = 0
        for device in pending.only("pk", "device_id", "desired", "desired_generation")[: self.batch]:
            document: dict[str, Any] = device.desired or {}
            try:
                message = protocol.Desired.model_validate(
                    {
                        "generation": device.desired_generation,
                        "model": document.get("model"),
                        "config": document.get("config") or {},
                    }
                )
            except ValidationError as exc:
                # Only a row written before the kernel's model checked it can get here; it can never
                # be sent, so it is passed over once, loudly, instead of on every poll.
                log.error(
                    "desired state not sendable",
                    extra={
                        "device": device.device_id,
                        "generation": device.desired_generation,
                        "error": str(exc)[:300],
                    },
                )
                self._mark_published(device)
                continue
            message = sign_desired(message)  # devices refuse unsigned desired state
            info = self._publish(device.device_id, "desired", message, retain=True)
            info.wait_for_publish(timeout=10)
            if info.is_published():
                self._mark_published(device)
                count += 1
        return count

    @staticmethod
    def _mark_published(device: Device) -> None:
        # Only move forward: another bridge may have published a newer one.
        Device.objects.filter(pk=device.pk, published_generation__lt=device.desired_generation).update(
            published_generation=device.desired_generation
        )

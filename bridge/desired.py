"""Desired state out: every device's newest signed document, published retained on its ``desired`` topic.

The bridge publishes; it never decides what a device should run, nor signs
anything. The document is built, bound to its device and signed by the
control plane (``fleet.desired``), and published here once per generation: ``Device.published_generation`` records
the newest one the broker confirmed, so a restart publishes only what is
pending and several bridges side by side only ever move it forward.
"""

from __future__ import annotations

import logging

from django.db.models import F
from pydantic import ValidationError

from agent.kernel import protocol
from bridge.polling import PendingPublisher
from fleet.models import Device

log = logging.getLogger(__name__)


class DesiredPublisher(PendingPublisher):
    """Publishes pending desired documents; ``run`` is the bridge's ``bridge-desired`` thread."""

    what = "desired states"
    default_batch = 500

    def publish_pending(self) -> int:
        """Publish, retained, every signed desired document newer than the last one published."""
        pending = Device.objects.filter(
            desired_generation__gt=F("published_generation"),
            desired_expires_at__isnull=False,  # signed (fleet.desired); an unsigned one waits for a key
            revoked_at__isnull=True,
        )
        count = 0
        for device in pending.only("pk", "device_id", "desired_document", "desired_generation")[: self.batch]:
            try:
                message = protocol.Desired.model_validate(device.desired_document)
            except ValidationError as exc:
                # Only a row changed behind the control plane's back can get here; it can never
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
            if not self.sent(self._publish(device.device_id, "desired", message, retain=True)):
                # The broker is not taking more now (paho's queue, a lost connection): the rest wait.
                break
            self._mark_published(device)
            count += 1
        return count

    @staticmethod
    def _mark_published(device: Device) -> None:
        # Only move forward: another bridge may have published a newer one.
        Device.objects.filter(pk=device.pk, published_generation__lt=device.desired_generation).update(
            published_generation=device.desired_generation
        )

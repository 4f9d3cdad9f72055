"""Commands out: each device's queued commands (``fleet.commands``), published on its ``commands`` topic.

The bridge publishes; it never decides what to send. Pending commands go
oldest first at QoS 1, not retained (a command is said once), and each is
marked published once the broker confirms it, so a restart sends only what is
still pending; a command past ``fleet.commands.COMMAND_TTL`` is marked expired
instead of sent. Bridges side by side take pending rows under ``SKIP LOCKED``,
so no two publish the same command.
"""

from __future__ import annotations

import logging

from django.db import transaction
from django.utils import timezone
from pydantic import ValidationError

from agent.kernel import protocol
from bridge.polling import PendingPublisher
from fleet.commands import COMMAND_TTL
from fleet.models import DeviceCommand

log = logging.getLogger(__name__)


class CommandPublisher(PendingPublisher):
    """Publishes pending device commands; ``run`` is the bridge's ``bridge-commands`` thread."""

    what = "device commands"
    default_batch = 100

    def publish_pending(self) -> int:
        """Publish every pending command, oldest first; returns how many the broker confirmed."""
        now = timezone.now()
        DeviceCommand.objects.filter(
            published_at__isnull=True, expired_at__isnull=True, created_at__lt=now - COMMAND_TTL
        ).update(expired_at=now)
        count = 0
        with transaction.atomic():
            pending = (
                DeviceCommand.objects.filter(
                    published_at__isnull=True, expired_at__isnull=True, device__revoked_at__isnull=True
                )
                .select_for_update(skip_locked=True, of=("self",))
                .select_related("device")
                .order_by("created_at", "pk")[: self.batch]
            )
            for row in pending:
                try:
                    message = protocol.Command(id=row.command_id, name=row.name, args=row.args)  # type: ignore[arg-type]
                except ValidationError as exc:
                    log.error("device command not sendable", extra={"command": row.pk, "error": str(exc)[:300]})
                    DeviceCommand.objects.filter(pk=row.pk).update(expired_at=now)
                    continue
                if not self.sent(self._publish(row.device.device_id, "commands", message)):
                    # The broker is not taking more now (paho's queue, a lost connection): the rest wait.
                    break
                DeviceCommand.objects.filter(pk=row.pk).update(published_at=timezone.now())
                count += 1
        return count

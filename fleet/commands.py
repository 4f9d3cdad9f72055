"""Commands to devices: queued in the database, published on their ``commands`` topic by the bridge.

``send`` queues one (name and args checked against the wire protocol's
``Command``), in the caller's transaction, so a command exists only if what
caused it was stored too; the bridge's ``bridge-commands`` thread
(``bridge.commands``) publishes pending commands at QoS 1, oldest first, and
marks each published once the broker confirms it. A device offline then gets
it when it reconnects (its session is persistent); commands older than
``COMMAND_TTL`` are not sent at all: an answer that late helps nobody.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

from agent.kernel import protocol
from fleet.models import Device, DeviceCommand

COMMAND_TTL = timedelta(hours=24)


def send(device: Device, name: str, args: dict[str, Any]) -> DeviceCommand:
    """Queue a command for ``device``; ValueError when it is not a valid ``Command``."""
    command = protocol.Command(id=uuid.uuid4().hex, name=name, args=args)  # type: ignore[arg-type]
    return DeviceCommand.objects.create(
        device=device, command_id=command.id, name=command.name, args=command.model_dump(mode="json")["args"]
    )

"""What every provisioner shares: the error a caller must not commit past, and the interface."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol


class BrokerUnavailable(RuntimeError):
    """The broker could not be told about a change; the caller must not commit it."""


class Provisioner(Protocol):
    def add_device(self, device_id: str, secret: str) -> None:
        """Let ``device_id`` connect with ``secret``, limited to its own topics."""

    def remove_device(self, device_id: str) -> None:
        """Refuse ``device_id`` from now on and disconnect it if connected. Idempotent."""

    def remove_devices(self, device_ids: Iterable[str]) -> None:
        """``remove_device`` for many, in as few broker round trips as the broker allows."""


class NullProvisioner:
    def add_device(self, device_id: str, secret: str) -> None:
        return None

    def remove_device(self, device_id: str) -> None:
        return None

    def remove_devices(self, device_ids: Iterable[str]) -> None:
        return None

"""Keeping the MQTT broker's credentials and ACLs in step with the control plane.

The control plane is the source of truth for who may connect. A provisioner
pushes each change to the broker: ``dynsec`` drives Mosquitto's
dynamic-security plugin, ``embedded`` needs no push because the embedded
broker checks the database itself, ``none`` is for brokers managed elsewhere.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache
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


@lru_cache(maxsize=1)
def provisioner() -> Provisioner:
    from django.conf import settings

    if settings.BROKER_PROVISIONER == "dynsec":
        from fleet.broker.dynsec import DynsecProvisioner

        return DynsecProvisioner.from_settings()
    return NullProvisioner()

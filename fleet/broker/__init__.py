"""Keeping the MQTT broker's credentials and ACLs in step with the control plane.

The control plane is the source of truth for who may connect. A provisioner
pushes each change to the broker: ``dynsec`` drives Mosquitto's
dynamic-security plugin, ``embedded`` needs no push because the embedded
broker checks the database itself, ``none`` is for brokers managed elsewhere.
"""

from __future__ import annotations

from functools import lru_cache

from django.conf import settings

from fleet.broker.base import BrokerUnavailable, NullProvisioner, Provisioner
from fleet.broker.dynsec import DynsecProvisioner

__all__ = ["BrokerUnavailable", "NullProvisioner", "Provisioner", "provisioner"]


@lru_cache(maxsize=1)
def provisioner() -> Provisioner:
    if settings.BROKER_PROVISIONER == "dynsec":
        return DynsecProvisioner.from_settings()
    return NullProvisioner()

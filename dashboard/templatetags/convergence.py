"""How far the devices of a table are from what they should run, for the site page's live device table."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from django import template

from fleet.models import Device

register = template.Library()


@dataclass(frozen=True)
class Convergence:
    assigned: int  # devices with a model version in their desired state
    converged: int  # of those, the ones that report running it
    offline: int  # of those still to change, the ones offline (sent the version when they return)

    @property
    def waiting(self) -> int:
        return self.assigned - self.converged

    @property
    def percent(self) -> int:
        return round(100 * self.converged / self.assigned) if self.assigned else 100


def wanted(device: Device) -> Any:
    model = device.desired.get("model") if isinstance(device.desired, dict) else None
    return model.get("version") if isinstance(model, dict) else None


@register.filter
def convergence(rows: Iterable[tuple[Any, ...]]) -> Convergence:
    """Counted from the rows already fetched for the table: no query of its own."""
    assigned = converged = offline = 0
    for device, *_ in rows:
        version = wanted(device)
        if not version:
            continue
        assigned += 1
        reported = device.reported.get("model_version") if isinstance(device.reported, dict) else None
        if reported == version:
            converged += 1
        elif not device.online:
            offline += 1
    return Convergence(assigned, converged, offline)

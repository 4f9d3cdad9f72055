"""Thin Celery tasks: rollups, retention, alert evaluation and notification delivery."""

from __future__ import annotations

import logging
from typing import Any

from celery import shared_task

# notify.send is registered as telemetry.tasks.notify where it is defined, next to the delivery code.
from telemetry import alerts, notify, rollups

log = logging.getLogger(__name__)


@shared_task(acks_late=True, time_limit=300, soft_time_limit=270)
def roll_up() -> int:
    return rollups.roll_up().records


@shared_task(acks_late=True, time_limit=1800)
def apply_retention() -> dict[str, int]:
    deleted = rollups.apply_retention()
    log.info("telemetry retention applied", extra={"deleted": deleted})
    return deleted


@shared_task(acks_late=True, time_limit=120)
def evaluate_alerts() -> dict[str, Any]:
    return vars(alerts.evaluate())


__all__ = ["apply_retention", "evaluate_alerts", "notify", "roll_up"]

"""Thin Celery tasks: rollups, retention, alert evaluation and notification delivery."""

from __future__ import annotations

import logging
from typing import Any

from celery import shared_task

from telemetry import alerts, rollups
from telemetry import notify as notifications
from telemetry.models import Alert, NotificationChannel

log = logging.getLogger(__name__)


@shared_task(acks_late=True, time_limit=300, soft_time_limit=270)
def roll_up() -> int:
    return rollups.roll_up().records


@shared_task(acks_late=True, time_limit=1800)
def apply_retention() -> dict[str, int]:
    deleted = rollups.apply_retention()
    log.info("telemetry retention deleted %s", deleted)
    return deleted


@shared_task(acks_late=True, time_limit=120)
def evaluate_alerts() -> dict[str, Any]:
    return vars(alerts.evaluate())


# Network errors and non-2xx answers (DeliveryError is an OSError) are retried
# with exponential backoff; the request itself has ALERT_WEBHOOK_TIMEOUT_S.
@shared_task(
    acks_late=True, autoretry_for=(OSError,), retry_backoff=True, retry_backoff_max=600, max_retries=8, time_limit=60
)
def notify(alert_pk: int, event: str, channel_pk: int) -> None:
    """Deliver one alert event to one channel."""
    alert = Alert.objects.select_related("rule", "device", "device__site").filter(pk=alert_pk).first()
    channel = NotificationChannel.objects.filter(pk=channel_pk, enabled=True).first()
    if alert is None or channel is None:
        return
    notifications.deliver(channel, notifications.payload(alert, event))

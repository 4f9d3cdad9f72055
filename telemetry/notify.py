"""Telling people about alerts: HMAC-signed webhooks and e-mail.

Webhook requests carry ``X-Edgefleet-Timestamp`` and
``X-Edgefleet-Signature: sha256=<hex>``, the HMAC-SHA256 with the channel's
secret of ``"{timestamp}.{body}"``. A receiver recomputes it, compares in
constant time, and refuses old timestamps, so a captured request cannot be
replayed later. Delivery runs in a Celery task with a timeout and retries.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import urllib.request
from typing import Any

from celery import shared_task
from django.conf import settings
from django.core.mail import send_mail

from telemetry.models import Alert, NotificationChannel

_SEVERITY_ORDER = {"info": 0, "warning": 1, "critical": 2}


class DeliveryError(OSError):
    """A webhook answered with something other than 2xx (worth retrying)."""


def sign(secret: str, timestamp: str, body: bytes) -> str:
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def verify(secret: str, timestamp: str, body: bytes, signature: str, *, max_age_s: int = 300) -> bool:
    """What a receiver does; here so tests and integrators share one definition."""
    try:
        fresh = abs(time.time() - int(timestamp)) <= max_age_s
    except ValueError:
        return False
    return fresh and hmac.compare_digest(sign(secret, timestamp, body), signature)


def payload(alert: Alert, event: str) -> dict[str, Any]:
    device = alert.device
    return {
        "event": event,
        "alert": {
            "id": alert.pk,
            "rule": alert.rule.kind,
            "severity": alert.rule.severity,
            "state": alert.state,
            "device": device.device_id,
            "device_name": device.name,
            "site": device.site.slug,
            "value": alert.value,
            "threshold": alert.rule.threshold,
            "since": alert.since.isoformat(),
            "opened_at": alert.opened_at.isoformat() if alert.opened_at else None,
            "resolved_at": alert.resolved_at.isoformat() if alert.resolved_at else None,
            "details": alert.details,
        },
    }


def channels_for(alert: Alert) -> list[NotificationChannel]:
    rank = _SEVERITY_ORDER.get(alert.rule.severity, 1)
    return [
        c for c in NotificationChannel.objects.filter(enabled=True) if _SEVERITY_ORDER.get(c.min_severity, 1) <= rank
    ]


def deliver(channel: NotificationChannel, body: dict[str, Any]) -> None:
    """Send one notification; raises DeliveryError or OSError for the task to retry."""
    if channel.kind == NotificationChannel.Kind.EMAIL:
        alert = body["alert"]
        subject = f"[edgefleet] {alert['rule']} {body['event']} on {alert['device_name']} ({alert['site']})"
        send_mail(subject, json.dumps(body, indent=2), settings.ALERT_EMAIL_FROM, channel.recipients)
        return
    data = json.dumps(body, separators=(",", ":"), sort_keys=True).encode()
    timestamp = str(int(time.time()))
    request = urllib.request.Request(  # noqa: S310 - the URL is an operator-configured http(s) webhook
        channel.url,
        data=data,
        method="POST",
        headers={
            "Content-Type": "application/json",
            "User-Agent": "edgefleet-alerts/1",
            "X-Edgefleet-Timestamp": timestamp,
            "X-Edgefleet-Signature": sign(channel.secret, timestamp, data),
        },
    )
    with urllib.request.urlopen(request, timeout=settings.ALERT_WEBHOOK_TIMEOUT_S) as response:  # noqa: S310
        if not 200 <= response.status < 300:
            raise DeliveryError(f"{channel.name}: HTTP {response.status}")


# Network errors and non-2xx answers (DeliveryError is an OSError) are retried
# with exponential backoff; the request itself has ALERT_WEBHOOK_TIMEOUT_S.
@shared_task(
    name="telemetry.tasks.notify",
    acks_late=True,
    autoretry_for=(OSError,),
    retry_backoff=True,
    retry_backoff_max=600,
    max_retries=8,
    time_limit=60,
)
def send(alert_pk: int, event: str, channel_pk: int) -> None:
    """Deliver one alert event to one channel."""
    alert = Alert.objects.select_related("rule", "device", "device__site").filter(pk=alert_pk).first()
    channel = NotificationChannel.objects.filter(pk=channel_pk, enabled=True).first()
    if alert is None or channel is None:
        return
    deliver(channel, payload(alert, event))

"""Thin Celery tasks: each takes primary keys and calls a service."""

from __future__ import annotations

import logging
from datetime import timedelta

from celery import shared_task
from django.conf import settings
from django.utils import timezone

from fleet import desired
from fleet.broker import BrokerUnavailable, provisioner
from fleet.models import Device

log = logging.getLogger(__name__)


@shared_task(acks_late=True, autoretry_for=(BrokerUnavailable,), retry_backoff=True, max_retries=10, time_limit=300)
def reconcile_broker(device_pk: int | None = None) -> int:
    """Repeat the broker removal of revoked devices (all, or one). Idempotent.

    All revoked devices go to the broker in batches: one round trip per
    device would not fit the time limit on a fleet with years of revocations.
    """
    devices = Device.objects.filter(revoked_at__isnull=False)
    if device_pk is not None:
        devices = devices.filter(pk=device_pk)
    device_ids = list(devices.values_list("device_id", flat=True))
    if device_ids:
        provisioner().remove_devices(device_ids)
    return len(device_ids)


@shared_task(acks_late=True, time_limit=60)
def mark_silent_devices_offline() -> int:
    """A device whose broker session ended without a will (broker restart) is caught here."""
    now = timezone.now()
    count = Device.objects.mark_silent_offline(cutoff=now - timedelta(seconds=settings.DEVICE_OFFLINE_AFTER_S), at=now)
    if count:
        log.info("silent devices marked offline", extra={"count": count})
    return count


@shared_task(acks_late=True, time_limit=900)
def reissue_desired() -> int:
    """Sign a new generation of every desired document before it expires (and any still unsigned)."""
    count = desired.reissue_expiring()
    if count:
        log.info("desired documents re-issued", extra={"count": count})
    return count

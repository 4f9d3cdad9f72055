"""Thin Celery tasks: the beat's hourly retention of escalated frames."""

from __future__ import annotations

from celery import shared_task

from escalations import retention


@shared_task(acks_late=True, time_limit=1800, soft_time_limit=1700)
def apply_retention() -> dict[str, int]:
    """Remove expired frames' pixels per site; several workers may run it at once (skip_locked)."""
    return retention.apply_retention()

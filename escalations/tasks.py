"""Thin Celery tasks: the cloud model's answers (queue ``cloud``) and the beat's hourly retention of frames."""

from __future__ import annotations

import logging

from celery import shared_task

from core.errors import ServiceError
from escalations import answering, retention

log = logging.getLogger(__name__)


@shared_task(acks_late=True, time_limit=1800, soft_time_limit=1700)
def apply_retention() -> dict[str, int]:
    """Remove expired frames' pixels per site; several workers may run it at once (skip_locked)."""
    return retention.apply_retention()


@shared_task(acks_late=True, time_limit=600, soft_time_limit=570)
def answer_escalations() -> int:
    """Answer every frame waiting for the cloud model, in dynamic batches; the frames answered.

    Sent on every upload and by the beat every few seconds (a safety net for a lost message); workers on
    the ``cloud`` queue run it, each claiming its own frames.
    """
    try:
        batches = answering.answer_waiting()
    except ServiceError as exc:
        # No cloud model published yet: the frames wait, and are answered once one is.
        log.warning("escalations not answered", extra={"code": exc.code, "detail": exc.detail})
        return 0
    return sum(batch.size for batch in batches)

"""Thin Celery tasks: the beat's rollout tick."""

from __future__ import annotations

from celery import shared_task

from rollouts import scheduler


@shared_task(acks_late=True, time_limit=120, soft_time_limit=100)
def tick() -> int:
    """Step every running rollout once; several workers may run it at once (row locks, skip_locked)."""
    return scheduler.tick()

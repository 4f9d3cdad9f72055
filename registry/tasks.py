"""Thin Celery tasks: each takes primary keys and calls a service."""

from __future__ import annotations

from celery import shared_task

from registry import variants
from registry.models import ModelVersion


@shared_task(acks_late=True, time_limit=1800, soft_time_limit=1700, max_retries=0)
def build_int8_bundle(version_pk: int) -> int:
    """Quantise a version to a cpu-int8 bundle (idempotent: an existing one is kept)."""
    version = ModelVersion.objects.select_related("model").get(pk=version_pk)
    return variants.build_int8_bundle(version).pk

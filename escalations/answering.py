"""The cloud worker's loop: escalated frames in dynamic batches, both answers stored, the cloud's sent back.

Batching as Triton's dynamic batcher does it: a batch holds at most
``CLOUD_MAX_BATCH`` frames; when fewer are waiting, the worker waits until the
oldest has waited ``CLOUD_MAX_QUEUE_DELAY_MS`` for more to arrive, then runs
what it has. A frame is claimed (``cloud_claimed_at``) in a short transaction
with ``SKIP LOCKED``, so workers side by side never answer one twice; the
model runs outside any transaction; a claim older than ``CLAIM_TIMEOUT`` (a
worker killed mid-batch) is taken again by the next worker.

An answer is stored beside the edge's and decides where the frame goes:
``review`` when edge and cloud disagree or the cloud is unsure too (below
``CLOUD_REVIEW_BELOW_PCT``), else ``answered``. The device gets the cloud's
answer as an ``escalation_result`` command (``fleet.commands``). A frame the
cloud model cannot read is sent to review without a cloud answer.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from agent.kernel import protocol
from escalations import cloud
from escalations.models import Escalation, EscalationState
from fleet import commands

log = logging.getLogger(__name__)

CLAIM_TIMEOUT = timedelta(minutes=5)
POLL_S = 0.005


@dataclass(frozen=True)
class Batch:
    size: int
    seconds: float  # the model's run over the batch


def waiting(now: datetime) -> Escalation | None:
    """The oldest frame waiting for the cloud (unclaimed, or claimed by a worker that died)."""
    return _claimable(now).only("pk", "received_at").first()


def _claimable(now: datetime) -> QuerySet[Escalation]:
    return (
        Escalation.objects.filter(state=EscalationState.AWAITING_CLOUD, image_path__isnull=False)
        .filter(image_deleted_at__isnull=True)
        .exclude(cloud_claimed_at__gte=now - CLAIM_TIMEOUT)
        .order_by("received_at", "pk")
    )


def fill(sleep: Callable[[float], None] = time.sleep) -> None:
    """Wait, at most until the oldest waiting frame is ``CLOUD_MAX_QUEUE_DELAY_MS`` old, for a full batch."""
    delay = timedelta(milliseconds=settings.CLOUD_MAX_QUEUE_DELAY_MS)
    while True:
        now = timezone.now()
        oldest = waiting(now)
        if oldest is None:
            return
        left = (oldest.received_at + delay - now).total_seconds()
        if left <= 0 or _claimable(now).count() >= settings.CLOUD_MAX_BATCH:
            return
        sleep(min(left, POLL_S))


def claim(now: datetime | None = None) -> list[Escalation]:
    """Take up to ``CLOUD_MAX_BATCH`` waiting frames for this worker."""
    now = now or timezone.now()
    with transaction.atomic():
        rows = list(
            _claimable(now).select_for_update(skip_locked=True).select_related("device")[: settings.CLOUD_MAX_BATCH]
        )
        Escalation.objects.filter(pk__in=[r.pk for r in rows]).update(cloud_claimed_at=now)
    return rows


def answer_batch(rows: list[Escalation]) -> Batch:
    """Run the cloud model over ``rows`` and store every answer; the devices get theirs as commands."""
    model = cloud.load()
    images = []
    for row in rows:
        try:
            images.append(row.image_file().read_bytes())
        except OSError as exc:
            log.warning("escalated image missing", extra={"escalation": row.pk, "error": str(exc)})
            images.append(b"")
    started = time.perf_counter()
    answers = model.answer(images)
    seconds = time.perf_counter() - started
    now = timezone.now()
    review_below = settings.CLOUD_REVIEW_BELOW_PCT / 100
    with transaction.atomic():
        for row, answer in zip(rows, answers, strict=True):
            row.cloud_claimed_at, row.answered_at = None, now
            row.cloud_model_version = f"{model.name}@{model.version}"
            if answer is None or answer.label is None:
                row.state = EscalationState.REVIEW
                row.save(update_fields=["cloud_claimed_at", "answered_at", "cloud_model_version", "state"])
                continue
            row.cloud_label, row.cloud_confidence = answer.label, answer.confidence
            unsure = answer.confidence < review_below
            row.state = EscalationState.REVIEW if unsure or answer.label != row.label else EscalationState.ANSWERED
            row.save(
                update_fields=[
                    "cloud_claimed_at",
                    "answered_at",
                    "cloud_model_version",
                    "cloud_label",
                    "cloud_confidence",
                    "state",
                ]
            )
            reply = protocol.EscalationAnswer(
                frame=row.frame_id,
                escalation=row.pk,
                label=answer.label,
                confidence=answer.confidence,
                model_name=model.name,
                model_version=model.version,
                edge_label=row.label or None,
                answered_at=now,
            )
            commands.send(row.device, "escalation_result", reply.model_dump(mode="json"))
    return Batch(size=len(rows), seconds=seconds)


def answer_waiting(*, sleep: Callable[[float], None] = time.sleep, max_batches: int = 1000) -> list[Batch]:
    """Answer every frame waiting now, batch after batch; returns the batches run."""
    batches = []
    for _ in range(max_batches):
        fill(sleep)
        rows = claim()
        if not rows:
            break
        batches.append(answer_batch(rows))
    return batches

"""The review queue: escalations where edge and cloud disagree, or the cloud is unsure too, wait for a person.

A reviewer confirms or corrects the label (one of the edge model version's
labels); the decision, who made it and why, is stored on the escalation and
in the audit log, and the frame leaves the queue (``reviewed``). A reviewed
frame can be reviewed again (a second opinion): the newest decision counts,
every one is audited.
"""

from __future__ import annotations

import math
from typing import Any

from django.db import transaction
from django.utils import timezone

from core.errors import ServiceError
from core.models import AuditLog
from escalations.models import Escalation, EscalationState
from fleet import access
from registry.models import ModelVersion

NOTE_MAX = 2000


def labels_for(escalation: Escalation) -> list[str]:
    """The labels a reviewer may choose: the edge model version's, else the cloud model version's.

    Empty only when the registry knows neither (a frame from a model published elsewhere): any label then.
    """
    versions = [(escalation.model_name, escalation.model_version)]
    if escalation.cloud_model_version and "@" in escalation.cloud_model_version:
        name, _, version = escalation.cloud_model_version.partition("@")
        versions.append((name, version))
    for name, version in versions:
        labels = ModelVersion.objects.filter(model__name=name, version=version).values_list("labels", flat=True).first()
        if labels:
            return [str(label) for label in labels]
    return []


MAX_BOXES = 500


def decision(row: Escalation, label: str) -> str:
    """What the reviewer did: confirmed the cloud's answer, confirmed the edge's, or corrected both."""
    if label == row.cloud_label:
        return "confirm_cloud"
    if label == row.label:
        return "confirm_edge"
    return "correct"


def review(
    escalation: Escalation,
    *,
    label: str,
    actor: Any,
    note: str = "",
    boxes: list[dict[str, Any]] | None = None,
) -> Escalation:
    """Record a person's label (and, for a detector's frame, its boxes); 409 before the cloud has answered.

    ``boxes``: ``[{"label": ..., "box": [x, y, w, h]}]`` in the frame's pixels, each label one of the
    model's, each box inside the image.
    """
    access.require_sites(actor, [escalation.device.site_id], "review this site's escalations")
    allowed = labels_for(escalation)
    if allowed and label not in allowed:
        message = f"{label!r} is not a label of {escalation.model_name} {escalation.model_version}: {allowed}."
        raise ServiceError("invalid_label", message, 400, fields={"label": [message]})
    checked = _checked_boxes(boxes, allowed, escalation) if boxes is not None else None
    with transaction.atomic():
        row = Escalation.objects.select_for_update().get(pk=escalation.pk)
        if row.state not in (EscalationState.REVIEW, EscalationState.REVIEWED, EscalationState.ANSWERED):
            raise ServiceError("invalid_state", f"This escalation is {row.state}: the cloud has not answered yet.", 409)
        previous = row.review_label
        row.review_label, row.review_note, row.review_boxes = label, note[:NOTE_MAX], checked
        row.reviewed_by = actor if getattr(actor, "pk", None) else None
        row.reviewed_at, row.state = timezone.now(), EscalationState.REVIEWED
        row.save(update_fields=["review_label", "review_note", "review_boxes", "reviewed_by", "reviewed_at", "state"])
        AuditLog.record(
            actor=actor,
            action="escalation.review",
            target=row,
            reason=note[:NOTE_MAX],
            label=label,
            edge_label=row.label,
            cloud_label=row.cloud_label,
            previous_review=previous,
            decision=decision(row, label),
        )
    return row


def _checked_boxes(boxes: list[dict[str, Any]], allowed: list[str], row: Escalation) -> list[dict[str, Any]]:
    if len(boxes) > MAX_BOXES:
        raise ServiceError("invalid_boxes", f"At most {MAX_BOXES} boxes.", 400, fields={"boxes": ["too many"]})
    width, height = row.image_width or 0, row.image_height or 0
    checked = []
    for i, item in enumerate(boxes):
        where = f"boxes[{i}]"
        label, box = item.get("label"), item.get("box")
        if not isinstance(label, str) or (allowed and label not in allowed):
            raise ServiceError(
                "invalid_boxes", f"{where}.label must be one of {allowed}.", 400, fields={where: ["label"]}
            )
        if (
            not isinstance(box, list)
            or len(box) != 4
            or not all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in box)
        ):
            raise ServiceError("invalid_boxes", f"{where}.box is [x, y, w, h] in pixels.", 400, fields={where: ["box"]})
        x, y, w, h = (float(v) for v in box)
        if w <= 0 or h <= 0 or x < 0 or y < 0 or (width and x + w > width) or (height and y + h > height):
            message = f"{where}.box must lie inside the {width}x{height} frame with a positive size."
            raise ServiceError("invalid_boxes", message, 400, fields={where: ["box"]})
        checked.append({"label": label, "box": [x, y, w, h]})
    return checked

"""The cloud fallback's health: do the cloud and the edge still agree on the frames the edge is sure of?

Devices send a small share of their confident frames up as fallback samples
(``fallback_share``), so the cloud path is used every day and does not rot
unseen. On confident frames edge and cloud should nearly always agree; when
their agreement over the last day falls below the rule's threshold on a
device (with at least ``MIN_FRAMES`` answered samples), the alert
``cloud_fallback_disagreement`` opens for it: the cloud model, the edge model
or the camera has changed, and whichever answer is trusted is now in doubt.
"""

from __future__ import annotations

from datetime import timedelta

from django.db.models import Count, F, Q

from escalations.models import Escalation
from telemetry import health
from telemetry.alerts import RuleDefault

WINDOW = timedelta(hours=24)
MIN_FRAMES = 20


def fallback_disagreement(ctx: health.Context, threshold: float) -> health.Findings:
    rows = (
        Escalation.objects.filter(reason="fallback", cloud_label__isnull=False, answered_at__gte=ctx.now - WINDOW)
        .values("device_id")
        .annotate(frames=Count("id"), agreed=Count("id", filter=Q(cloud_label=F("label"))))
    )
    found = {}
    for row in rows:
        if row["frames"] < MIN_FRAMES:
            continue
        agreement = row["agreed"] / row["frames"]
        if agreement < threshold:
            found[row["device_id"]] = health.Finding(
                round(agreement, 4), {"frames": row["frames"], "agreed": row["agreed"], "window_h": 24}
            )
    return found


RULE = RuleDefault(
    0.8,
    0,
    "warning",
    "Edge and cloud agree on fewer than this share of the confident frames sampled in a day",
    fallback_disagreement,
)

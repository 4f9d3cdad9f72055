"""The threshold advisor over a fleet's real escalations, and applying its pick through ``desired``.

Each frame the cloud answered becomes an ``advisor.Record``: the edge's
confidence and label, and the truth (a reviewer's label where there is one,
else the cloud's answer). A frame stands for ``1 / sample_rate`` frames like
it: an unsure frame (every one is sent) for itself, a fallback sample (the
agent's ``fallback_share`` of its confident frames) for the confident frames
it was drawn from, so thresholds above the one devices run now are judged too.
The weight is applied by repeating a record (rounded, at most ``MAX_WEIGHT``
times); the curve and the pick are ``escalations.advisor``'s.

Applying a threshold sets ``escalation_threshold`` in the signed desired
document of every device at the site whose desired model is that version
(``fleet.services.set_runtime_config``), audited per device and once for the
action.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from django.db import transaction

from core.errors import ServiceError
from core.models import AuditLog
from escalations import advisor
from escalations.models import Escalation
from fleet import access
from fleet import services as fleet
from fleet.models import Device, Site

# The newest frames read for one curve, and the most one fallback sample may stand for.
MAX_FRAMES = 20_000
MAX_WEIGHT = 1_000


def records(model_name: str, model_version: str, *, site: Site | None = None) -> list[advisor.Record]:
    rows = Escalation.objects.filter(
        model_name=model_name, model_version=model_version, cloud_label__isnull=False
    ).order_by("-received_at")
    if site is not None:
        rows = rows.filter(site=site)
    out = []
    fields = ("confidence", "label", "cloud_label", "review_label", "sample_rate")
    for confidence, label, cloud_label, review_label, sample_rate in rows.values_list(*fields)[:MAX_FRAMES]:
        record = advisor.Record(
            confidence=float(confidence),
            edge_label=label or "",
            truth=review_label or cloud_label,
            cloud_label=cloud_label,
        )
        out.extend([record] * max(1, min(MAX_WEIGHT, round(1.0 / sample_rate))))
    return out


def advise(
    model_name: str,
    model_version: str,
    *,
    site: Site | None = None,
    max_escalation_rate: float | None = None,
    min_accuracy: float | None = None,
) -> dict[str, Any]:
    """The curve of escalation rate against expected accuracy, and the recommended point when asked for one."""
    frames = records(model_name, model_version, site=site)
    points = advisor.curve(frames)
    pick = None
    if points and (max_escalation_rate is not None or min_accuracy is not None):
        pick = advisor.recommend(points, max_escalation_rate=max_escalation_rate, min_accuracy=min_accuracy)
    answered = Escalation.objects.filter(model_name=model_name, model_version=model_version, cloud_label__isnull=False)
    if site is not None:
        answered = answered.filter(site=site)
    return {
        "model_name": model_name,
        "model_version": model_version,
        "site": site.slug if site else None,
        "frames": answered.count(),
        "fallback_frames": answered.filter(reason="fallback").count(),
        "weighted_frames": len(frames),
        "points": [asdict(p) for p in points],
        "recommendation": None
        if pick is None
        else {
            "point": asdict(pick.point),
            "binding": pick.binding,
            "accuracy_met": pick.accuracy_met,
            "reason": pick.reason,
        },
    }


def apply(
    model_name: str, model_version: str, *, site: Site, threshold: float, actor: Any, reason: str = ""
) -> dict[str, Any]:
    """Set the escalation threshold on the site's devices that run (are sent) this version; signed and audited."""
    access.require_sites(actor, [site.pk], "change this site's escalation threshold")
    devices = [
        d
        for d in Device.objects.filter(site=site, revoked_at__isnull=True)
        if isinstance(d.desired, dict)
        and (d.desired.get("model") or {}).get("name") == model_name
        and (d.desired.get("model") or {}).get("version") == model_version
    ]
    if not devices:
        message = f"No device at {site.slug} is sent {model_name} {model_version}."
        raise ServiceError("no_devices", message, 409)
    with transaction.atomic():
        generations = fleet.set_runtime_config(devices, {"escalation_threshold": threshold}, actor=actor, reason=reason)
        AuditLog.record(
            actor=actor,
            action="escalation.threshold_apply",
            target=site,
            reason=reason,
            model=model_name,
            version=model_version,
            threshold=threshold,
            devices=len(devices),
        )
    return {"site": site.slug, "threshold": threshold, "devices": len(generations)}

"""Drift: is a device's recent confidence (and class mix) still what its model version showed at first?

The statistic is the population stability index over the 20 confidence bins
(and over the class labels):

    PSI = sum_i (a_i - e_i) * ln(a_i / e_i)

with e the baseline and a the recent proportions, each floored at
``FLOOR`` so an empty bin does not make it infinite. The usual reading, used
as thresholds here: below 0.1 stable, 0.1 to 0.25 worth watching, above 0.25
a real shift. With fewer than ``MIN_FRAMES`` frames on either side sampling
noise alone reaches 0.1 (about (bins - 1) * (1/n1 + 1/n2)), so no verdict is
given.

The baseline of a version is a reference distribution recorded for it (from
CI), or else its first ``TELEMETRY_BASELINE_HOURS`` in the field over every
device that ran it.

A rollup row or a baseline this module cannot read (a reference with other
bins, a bucket at the end of time) is quarantined (``Quarantine``, source
``drift``) and the devices it concerns get no verdict; the rest are judged.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import Min

from registry.models import ModelVersion
from telemetry.metrics import Summary
from telemetry.models import Baseline, Quarantine, Resolution, Scope, WindowRollup

log = logging.getLogger(__name__)

WATCH = 0.1
ALERT = 0.25
MIN_FRAMES = 1000
FLOOR = 1e-4
RECENT = timedelta(hours=1)


def psi(expected: Sequence[float], actual: Sequence[float]) -> float:
    """PSI between two histograms given as counts or proportions over the same bins."""
    if len(expected) != len(actual):
        raise ValueError("histograms need the same bins")
    e_total, a_total = float(sum(expected)), float(sum(actual))
    if e_total <= 0 or a_total <= 0:
        raise ValueError("both histograms need samples")
    value = 0.0
    for e, a in zip(expected, actual, strict=True):
        pe, pa = max(e / e_total, FLOOR), max(a / a_total, FLOOR)
        value += (pa - pe) * math.log(pa / pe)
    return value


def class_psi(expected: Mapping[str, int], actual: Mapping[str, int]) -> float | None:
    labels = sorted(set(expected) | set(actual))
    if not labels or not sum(expected.values()) or not sum(actual.values()):
        return None
    return psi([expected.get(k, 0) for k in labels], [actual.get(k, 0) for k in labels])


def level(value: float | None) -> str:
    if value is None:
        return "insufficient"
    return "alert" if value >= ALERT else "watch" if value >= WATCH else "ok"


def reference_baseline(model_name: str, model_version: str) -> Baseline | None:
    """The reference distribution CI published with the version (unsaved), or None without one."""
    reference = (
        ModelVersion.objects.filter(model__name=model_name, version=model_version)
        .values_list("reference_distribution", flat=True)
        .first()
    )
    if not reference:
        return None
    confidence = list(reference["confidence"])
    return Baseline(
        model_name=model_name,
        model_version=model_version,
        source=Baseline.Source.REFERENCE,
        confidence=confidence,
        classes=dict(reference.get("classes", {})),
        frames=sum(confidence),
    )


def baseline_for(model_name: str, model_version: str, now: datetime) -> Baseline | None:
    """The version's reference distribution (published with it by CI), or else its field baseline
    (computed once its first hours in the field are over)."""
    reference = reference_baseline(model_name, model_version)
    if reference is not None:
        return reference
    row = Baseline.objects.filter(model_name=model_name, model_version=model_version).first()
    if row is not None and row.until and row.until <= now:
        return row
    fleet = WindowRollup.objects.filter(
        resolution=Resolution.HOUR, scope=Scope.FLEET, key="*", model_name=model_name, model_version=model_version
    )
    first = fleet.aggregate(first=Min("bucket"))["first"]
    if first is None:
        return None
    until = first + timedelta(hours=settings.TELEMETRY_BASELINE_HOURS)
    summary = Summary()
    for rollup in fleet.filter(bucket__lt=until):
        summary.add_totals(rollup)
    row, _ = Baseline.objects.update_or_create(
        model_name=model_name,
        model_version=model_version,
        defaults={
            "source": Baseline.Source.FIELD,
            "confidence": summary.confidence,
            "classes": dict(summary.classes),
            "frames": sum(summary.confidence),
            "since": first,
            "until": until,
        },
    )
    return row


@dataclass(frozen=True)
class Drift:
    device_id: str
    model_name: str
    model_version: str
    frames: int
    baseline_frames: int
    confidence_psi: float | None
    class_psi: float | None

    @property
    def worst(self) -> float | None:
        values = [v for v in (self.confidence_psi, self.class_psi) if v is not None]
        return max(values) if values else None

    @property
    def level(self) -> str:
        return level(self.worst)


def device_drift(now: datetime, device_ids: Sequence[str] | None = None) -> list[Drift]:
    """Drift of each device and version over the last hour; devices without enough frames get None."""
    recent = WindowRollup.objects.filter(resolution=Resolution.MINUTE, scope=Scope.DEVICE, bucket__gte=now - RECENT)
    if device_ids is not None:
        recent = recent.filter(key__in=device_ids)
    summaries: dict[tuple[str, str, str], Summary] = defaultdict(Summary)
    for row in recent:
        try:
            summaries[(row.key, row.model_name, row.model_version)].add_totals(row)
        except Exception as exc:
            quarantine(f"window_rollup:{row.pk}", exc, f"{row.key} {row.model_name}@{row.model_version} {row.bucket}")
    baselines: dict[tuple[str, str], Baseline | None] = {}
    results = []
    for (device_id, name, version), summary in sorted(summaries.items()):
        try:
            if (name, version) not in baselines:
                baselines[(name, version)] = baseline_for(name, version, now)
            base = baselines[(name, version)]
            frames = sum(summary.confidence)
            enough = base is not None and frames >= MIN_FRAMES and base.frames >= MIN_FRAMES
            result = Drift(
                device_id=device_id,
                model_name=name,
                model_version=version,
                frames=frames,
                baseline_frames=base.frames if base else 0,
                confidence_psi=psi(base.confidence, summary.confidence) if enough and base else None,
                class_psi=class_psi(base.classes, summary.classes) if enough and base else None,
            )
        except Exception as exc:
            # One version's unreadable baseline costs its devices their verdict, not the fleet.
            baselines[(name, version)] = None
            quarantine(f"baseline:{name}@{version}", exc, f"device {device_id}")
            result = Drift(device_id, name, version, sum(summary.confidence), 0, None, None)
        results.append(result)
    return results


def quarantine(ref: str, exc: Exception, detail: str) -> None:
    log.warning("drift quarantined a row", extra={"ref": ref, "error": str(exc)[:300]})
    Quarantine.note("drift", ref, type(exc).__name__, f"{detail}: {exc}"[:2000])

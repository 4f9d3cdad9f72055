"""Reviewed frames as a training set: a zip in a standard layout, with a manifest of where each label came from.

* ``imagefolder`` (classification): ``<label>/<escalation id>.<ext>``, the
  layout torchvision's ``ImageFolder`` and Keras read.
* ``coco`` (detection): ``images/<escalation id>.<ext>`` and
  ``annotations.json`` in COCO's format (images, categories, annotations with
  ``[x, y, w, h]`` boxes).

Every frame's label has a source: ``reviewer`` (a person's decision), else
``cloud`` (the cloud model agreed with the edge, kept only with
``include_agreed``). ``manifest.json`` lists each file with its label, the
source, the edge's and the cloud's answers, the device, site, model version
and capture time, and the filters the export was made with. Frames whose
pixels were never kept or have been deleted by retention are counted as
skipped, not exported.
"""

from __future__ import annotations

import json
import tempfile
import zipfile
from dataclasses import dataclass, field
from datetime import datetime
from typing import IO, Any

from django.db.models import Q, QuerySet
from django.utils import timezone

from core.errors import ServiceError
from escalations.models import Escalation, EscalationState

FORMATS = ("imagefolder", "coco")
MAX_FRAMES = 100_000


@dataclass
class ExportFilter:
    site: str | None = None
    model_name: str | None = None
    model_version: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    include_agreed: bool = False

    def rows(self) -> QuerySet[Escalation]:
        wanted = Q(state=EscalationState.REVIEWED)
        if self.include_agreed:
            wanted |= Q(state=EscalationState.ANSWERED)
        rows = Escalation.objects.filter(wanted).select_related("device", "site").order_by("pk")
        if self.site:
            rows = rows.filter(site__slug=self.site)
        if self.model_name:
            rows = rows.filter(model_name=self.model_name)
        if self.model_version:
            rows = rows.filter(model_version=self.model_version)
        if self.since:
            rows = rows.filter(captured_at__gte=self.since)
        if self.until:
            rows = rows.filter(captured_at__lt=self.until)
        return rows


@dataclass
class Export:
    file: IO[bytes]
    frames: int
    skipped: int
    labels: dict[str, int] = field(default_factory=dict)


def label_of(row: Escalation) -> tuple[str | None, str]:
    """The frame's label and where it came from."""
    if row.state == EscalationState.REVIEWED and row.review_label:
        return row.review_label, "reviewer"
    if row.cloud_label:
        return row.cloud_label, "cloud"
    return (row.label or None), "edge"


def build(criteria: ExportFilter, *, fmt: str = "imagefolder") -> Export:
    """The zip of the frames ``criteria`` selects, in a temporary file positioned at its start."""
    if fmt not in FORMATS:
        raise ServiceError("invalid_format", f"format is one of {', '.join(FORMATS)}.", 400, fields={"format": [fmt]})
    rows = criteria.rows()
    total = rows.count()
    if total > MAX_FRAMES:
        message = f"{total} frames match; narrow the export to at most {MAX_FRAMES} (site, version, since, until)."
        raise ServiceError("export_too_large", message, 400)
    out = tempfile.TemporaryFile()
    manifest: list[dict[str, Any]] = []
    coco: dict[str, Any] = {"images": [], "annotations": [], "categories": []}
    categories: dict[str, int] = {}
    labels: dict[str, int] = {}
    skipped = 0
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED) as archive:
        for row in rows.iterator(chunk_size=500):
            label, source = label_of(row)
            if not row.has_image or label is None:
                skipped += 1
                continue
            try:
                pixels = row.image_file().read_bytes()
            except OSError:
                skipped += 1
                continue
            ext = "png" if row.content_type == "image/png" else "jpg"
            name = f"{label}/{row.pk}.{ext}" if fmt == "imagefolder" else f"images/{row.pk}.{ext}"
            archive.writestr(name, pixels)
            labels[label] = labels.get(label, 0) + 1
            manifest.append(
                {
                    "file": name,
                    "label": label,
                    "label_source": source,
                    "edge_label": row.label or None,
                    "edge_confidence": row.confidence,
                    "cloud_label": row.cloud_label,
                    "cloud_confidence": row.cloud_confidence,
                    "review_label": row.review_label,
                    "escalation": row.pk,
                    "device": row.device.device_id,
                    "site": row.site.slug,
                    "model": f"{row.model_name}@{row.model_version}",
                    "captured_at": row.captured_at.isoformat(),
                }
            )
            if fmt == "coco":
                image_id = len(coco["images"]) + 1
                coco["images"].append(
                    {"id": image_id, "file_name": name, "width": row.image_width, "height": row.image_height}
                )
                for box in row.review_boxes or []:
                    category = categories.setdefault(str(box["label"]), len(categories) + 1)
                    coco["annotations"].append(
                        {
                            "id": len(coco["annotations"]) + 1,
                            "image_id": image_id,
                            "category_id": category,
                            "bbox": [float(v) for v in box["box"]],
                            "area": float(box["box"][2]) * float(box["box"][3]),
                            "iscrowd": 0,
                        }
                    )
        if fmt == "coco":
            coco["categories"] = [{"id": i, "name": n} for n, i in sorted(categories.items(), key=lambda kv: kv[1])]
            archive.writestr("annotations.json", json.dumps(coco, indent=1))
        summary = {
            "format": fmt,
            "created_at": timezone.now().isoformat(),
            "filters": {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in vars(criteria).items()},
            "frames": len(manifest),
            "skipped_without_pixels": skipped,
            "labels": labels,
            "items": manifest,
        }
        archive.writestr("manifest.json", json.dumps(summary, indent=1))
    out.seek(0)
    return Export(out, len(manifest), skipped, labels)

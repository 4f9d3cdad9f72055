"""Receiving an escalated frame: the site's privacy policy, idempotency and a write that is all or nothing.

``receive`` takes what the API has already bounded (the metadata parsed by
``escalations.metadata``, the image checked by ``escalations.images``) and
stores it once per (device, frame). The file and the row go together:

* the image is written to a temporary file beside its final path and fsynced
  before the transaction starts;
* inside the transaction the row is inserted and the file renamed into place;
* if anything in between fails (the insert, the rename, the commit) both the
  temporary and the final file are removed, so a failure leaves neither a row
  without its file nor a file without its row. A process killed before the
  rename leaves a temporary file, which the hourly retention run removes once
  it is an hour old; only a kill between the rename and the commit leaves a
  final file behind, which no row points at and nothing serves.

Two uploads of one frame racing each other meet at the unique constraint on
(device, frame_id): the loser removes its file and answers the winner's row.
"""

from __future__ import annotations

import logging
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from core.errors import ServiceError
from escalations.images import CheckedImage
from escalations.metadata import Metadata
from escalations.models import Escalation
from fleet.models import Device, EscalationPrivacy, Site

log = logging.getLogger(__name__)

UPLOAD_DIR = "escalations"


@dataclass(frozen=True)
class Received:
    escalation: Escalation
    created: bool


def admit(device: Device, metadata: Metadata, *, has_frame: bool) -> Site:
    """The device's site, when the upload's metadata and the presence of a frame are within its policy.

    Checked before the image is decoded: an upload refused here costs no decoding.
    """
    if metadata.device_id != device.device_id:
        raise ServiceError(
            "device_mismatch",
            "The metadata names another device; a device uploads only its own frames.",
            403,
            fields={"metadata.device_id": ["Not the authenticated device."]},
        )
    site = Site.objects.get(pk=device.site_id)
    mode = site.escalation_privacy
    if mode == EscalationPrivacy.METADATA:
        if has_frame:
            raise ServiceError(
                "pixels_forbidden",
                f"Site {site.slug} keeps no pixels of escalated frames: send the metadata without a frame.",
                403,
                fields={"frame": ["This site's privacy mode is metadata: no frame."]},
            )
        return site
    if not has_frame:
        message = f"Site {site.slug} stores escalated frames ({mode}): send the frame."
        raise ServiceError("frame_required", message, 400, fields={"frame": [message]})
    if mode == EscalationPrivacy.CROP and metadata.crop is None:
        message = f"Site {site.slug} keeps crops only: send the crop box [x, y, w, h] it was cut from."
        raise ServiceError("crop_required", message, 400, fields={"metadata.crop": [message]})
    return site


def check_crop(metadata: Metadata, image: CheckedImage | None) -> None:
    """A crop is exactly the size of the box it says it was cut from."""
    if metadata.crop is None or image is None:
        return
    _, _, w, h = metadata.crop
    if (image.width, image.height) != (w, h):
        message = f"The frame is {image.width}x{image.height} pixels but the crop box is {w}x{h}."
        raise ServiceError("crop_mismatch", message, 400, fields={"metadata.crop": [message]})


def receive(device: Device, metadata: Metadata, image: CheckedImage | None) -> Received:
    """Store one escalated frame of ``device``, once; a repeated frame answers the stored row."""
    site = admit(device, metadata, has_frame=image is not None)
    check_crop(metadata, image)
    existing = _stored(device, metadata.frame)
    if existing is not None:
        return Received(existing, created=False)

    now = timezone.now()
    row = Escalation(
        device=device,
        site=site,
        frame_id=metadata.frame,
        captured_at=metadata.ts,
        model_name=metadata.model_name,
        model_version=metadata.model_version,
        threshold=metadata.threshold,
        result=metadata.result,
        label=metadata.label,
        confidence=metadata.confidence,
        reason=metadata.reason,
        sample_rate=metadata.sample_rate,
        privacy=site.escalation_privacy,
        crop=list(metadata.crop) if metadata.crop is not None else None,
        received_at=now,
    )
    if image is None:
        return _insert(row, None, None)
    relative = Path(UPLOAD_DIR, site.slug, f"{now:%Y}", f"{now:%m}", f"{uuid.uuid4().hex}.{image.extension}")
    final = Path(settings.MEDIA_ROOT) / relative
    final.parent.mkdir(parents=True, exist_ok=True)
    temporary = final.with_name(f".{final.name}.tmp")
    _write_synced(temporary, image.data)
    row.image_path = relative.as_posix()
    row.image_sha256 = image.sha256
    row.image_bytes = len(image.data)
    row.image_width, row.image_height = image.width, image.height
    row.content_type = image.content_type
    return _insert(row, temporary, final)


def _stored(device: Device, frame_id: str) -> Escalation | None:
    return Escalation.objects.filter(device=device, frame_id=frame_id).first()


def _insert(row: Escalation, temporary: Path | None, final: Path | None) -> Received:
    try:
        # durable: this block's end is the commit, so the file is in place exactly when the row is.
        with transaction.atomic(durable=True):
            row.save(force_insert=True)
            if temporary is not None and final is not None:
                os.replace(temporary, final)
    except IntegrityError:
        _discard(temporary, final)
        # Another upload of the same frame committed first.
        existing = Escalation.objects.filter(device_id=row.device_id, frame_id=row.frame_id).first()
        if existing is None:
            raise
        return Received(existing, created=False)
    except BaseException:
        _discard(temporary, final)
        raise
    log.info(
        "escalation received",
        extra={"device": row.device_id, "frame": row.frame_id, "privacy": row.privacy, "bytes": row.image_bytes},
    )
    return Received(row, created=True)


def _write_synced(path: Path, data: bytes) -> None:
    try:
        with path.open("xb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        path.unlink(missing_ok=True)
        raise


def _discard(*paths: Path | None) -> None:
    for path in paths:
        if path is not None:
            path.unlink(missing_ok=True)

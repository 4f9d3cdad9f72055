"""Escalated frames' pixels are kept for their site's ``escalation_retention_days``; the rows stay.

Each chunk is one transaction: lock expired rows (``skip_locked``, so two
workers share the work instead of queueing), remove their files, mark them.
A file is removed before its row is marked, inside the transaction: if the
commit fails the rows are still unmarked and the next run removes the (by
then missing) files again and marks them, so a frame is never left marked
deleted while its pixels stay on disk.
"""

from __future__ import annotations

import logging
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from core.models import AuditLog
from escalations import services
from escalations.models import Escalation
from fleet.models import Site

log = logging.getLogger(__name__)

# An upload writes its temporary file and renames it within a second or so; one this old was abandoned.
TEMPORARY_MAX_AGE = timedelta(hours=1)


def apply_retention(now: datetime | None = None, chunk: int | None = None) -> dict[str, int]:
    """Remove the expired frames of every site; returns how many per site slug (sites with none left out)."""
    now = now or timezone.now()
    chunk = chunk or settings.ESCALATION_RETENTION_CHUNK
    deleted: Counter[str] = Counter()
    live = Escalation.objects.filter(image_path__isnull=False, image_deleted_at__isnull=True)
    sites = Site.objects.filter(pk__in=live.values("site_id")).order_by("pk")
    for site in sites:
        cutoff = now - timedelta(days=site.escalation_retention_days)
        while True:
            removed = _remove_chunk(site, cutoff, now, chunk)
            deleted[site.slug] += removed
            if removed < chunk:
                break
    _sweep_temporary(now)
    counts = {slug: n for slug, n in sorted(deleted.items()) if n}
    if counts:
        _audit(counts, now)
        log.info("escalation retention applied", extra={"deleted": sum(counts.values()), "sites": len(counts)})
    return counts


def _remove_chunk(site: Site, cutoff: datetime, now: datetime, chunk: int) -> int:
    with transaction.atomic():
        rows = list(
            Escalation.objects.select_for_update(skip_locked=True)
            .filter(site=site, image_path__isnull=False, image_deleted_at__isnull=True, received_at__lt=cutoff)
            .order_by("received_at", "pk")
            .only("pk", "image_path")[:chunk]
        )
        for row in rows:
            row.image_file().unlink(missing_ok=True)
        Escalation.objects.filter(pk__in=[row.pk for row in rows]).update(image_deleted_at=now)
    return len(rows)


def _sweep_temporary(now: datetime) -> None:
    """Remove temporary files an upload left when its process died before it could (services.receive).

    A temporary file lives in the folder of the month it was written, so this month's and last month's
    folders of every site hold every one an hourly run can find.
    """
    root = Path(settings.MEDIA_ROOT) / services.UPLOAD_DIR
    if not root.is_dir():
        return
    stale = (now - TEMPORARY_MAX_AGE).timestamp()
    months = {f"{now:%Y}/{now:%m}", f"{now.replace(day=1) - timedelta(days=1):%Y/%m}"}
    for site_dir in root.iterdir():
        for month in months:
            for path in (site_dir / month).glob(".*.tmp"):
                try:
                    if path.stat().st_mtime < stale:
                        path.unlink(missing_ok=True)
                        log.warning("stale escalation upload removed", extra={"path": str(path)})
                except FileNotFoundError:
                    continue  # its upload finished or failed meanwhile


def _audit(counts: dict[str, int], now: datetime) -> None:
    # One entry per run, about escalated frames in general: no single row is its target.
    AuditLog.objects.create(
        actor=None,
        actor_label="system",
        action="escalation.retention",
        target_type=Escalation._meta.label_lower,
        target_id="retention",
        data={"deleted": sum(counts.values()), "sites": counts, "at": now.isoformat()},
    )

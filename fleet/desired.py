"""Desired documents: bound to their device, given a lifetime, signed once, and renewed before they expire.

A device applies a desired document only when its signature checks out and
its signed bytes name that device, a generation newer than the last one it
took, and an expiry still ahead (``agent.kernel.verify.check_desired``). So
the control plane signs each generation once, here, and stores the signed
document beside the row; the bridge only publishes what is stored
(``bridge.desired``). ``reissue_expiring`` (a beat task) signs a new
generation of every document before it expires, so a device whose updates
are withheld (a freeze) finds out and says so, rather than trusting an old
document for ever.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone
from pydantic import ValidationError

from agent.kernel import protocol
from fleet.models import Device, Site
from registry.signing import DesiredSigner, desired_signer

log = logging.getLogger(__name__)

_FIELDS = ["desired", "desired_generation", "desired_document", "desired_expires_at"]


def issue(device: Device, document: dict[str, Any], *, now: datetime | None = None) -> int:
    """Make ``document`` ({model, config, rollback_to}) the device's desired state; returns its generation.

    ``document`` is checked by the device kernel's own model before anything is
    stored (``protocol.ValidationError`` otherwise), so what is stored can be signed.
    """
    with transaction.atomic():
        row = Device.objects.select_for_update().select_related("site").get(pk=device.pk)
        row.desired = document
        row.desired_generation += 1
        _sign(row, now or timezone.now(), desired_signer(), strict=True)
        row.save(update_fields=_FIELDS)
    for field in _FIELDS:
        setattr(device, field, getattr(row, field))
    return row.desired_generation


def issue_many(documents: dict[int, dict[str, Any]], *, now: datetime | None = None) -> dict[int, int]:
    """``issue`` for many devices (pk -> document) in a constant number of queries; returns pk -> generation.

    The caller holds the transaction: rows are locked, signed and written together.
    """
    now = now or timezone.now()
    rows = list(Device.objects.select_for_update().select_related("site").filter(pk__in=documents).order_by("pk"))
    sign = desired_signer()
    for row in rows:
        row.desired = documents[row.pk]
        row.desired_generation += 1
        _sign(row, now, sign, strict=True)
    Device.objects.bulk_update(rows, _FIELDS, batch_size=1000)
    return {row.pk: row.desired_generation for row in rows}


def reissue_expiring(*, now: datetime | None = None, chunk: int = 500) -> int:
    """Re-sign, as a new generation, every desired document that expires within ``DESIRED_RENEW_HOURS``.

    Also signs the documents that are not signed yet (no signing key when they
    were set). Works through the fleet in chunks, each in its own transaction;
    a row another transaction holds is left to the next run. Returns how many
    documents were issued.
    """
    now = now or timezone.now()
    due = Device.objects.filter(revoked_at__isnull=True, desired_generation__gt=0).filter(
        Q(desired_expires_at__isnull=True) | Q(desired_expires_at__lte=now + renew_before())
    )
    issued = 0
    last_pk = 0
    while True:
        with transaction.atomic():
            rows = list(
                due.filter(pk__gt=last_pk)
                .select_related("site")
                .select_for_update(skip_locked=True, of=("self",))
                .order_by("pk")[:chunk]
            )
            if not rows:
                return issued
            last_pk = rows[-1].pk
            signed = []
            sign = desired_signer()
            for row in rows:
                row.desired_generation += 1
                if _sign(row, now, sign, strict=False):
                    signed.append(row)
            Device.objects.bulk_update(signed, _FIELDS)
        issued += len(signed)


def reissue_site(site: Site) -> int:
    """Issue a new generation of every desired document at ``site`` (its policy changed); returns how many."""
    with transaction.atomic():
        documents = dict(
            Device.objects.filter(site=site, revoked_at__isnull=True, desired_generation__gt=0).values_list(
                "pk", "desired"
            )
        )
        if not documents:
            return 0
        return len(issue_many({pk: document or {} for pk, document in documents.items()}))


def lifetime() -> timedelta:
    return timedelta(hours=settings.DESIRED_TTL_HOURS)


def renew_before() -> timedelta:
    return timedelta(hours=settings.DESIRED_RENEW_HOURS)


def _sign(row: Device, now: datetime, sign: DesiredSigner, *, strict: bool) -> bool:
    """Build and sign ``row``'s document for its current generation into ``row``; False if it cannot be.

    Without a signing key the document is left unsigned and unpublished (the
    next ``reissue_expiring`` signs it); a stored document the kernel refuses
    is logged and skipped there, raised when ``strict``.
    """
    document = row.desired or {}
    try:
        message = protocol.Desired.model_validate(
            {
                "device_id": row.device_id,
                "site": row.site.slug,
                "generation": row.desired_generation,
                "model": document.get("model"),
                "rollback_to": document.get("rollback_to"),
                "shadow": document.get("shadow"),
                # The site's escalation privacy rides in every document, so the device enforces it too.
                "config": {**(document.get("config") or {}), "escalation_privacy": row.site.escalation_privacy},
                "issued_at": now,
                "expires": now + lifetime(),
            }
        )
    except ValidationError as exc:
        if strict:
            raise
        log.error("desired state not signable", extra={"device": row.device_id, "error": str(exc)[:300]})
        return False
    message = sign(message)
    if message.signature is None:
        row.desired_document, row.desired_expires_at = {}, None
        return strict
    row.desired_document = message.model_dump(mode="json", exclude_none=True)
    row.desired_expires_at = message.expires
    return True

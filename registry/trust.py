"""The trust store handed to devices: public keys that may sign bundles and desired state."""

from __future__ import annotations

import logging
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.utils import timezone

from registry.models import SigningKey

log = logging.getLogger(__name__)


def trust_store() -> list[dict[str, Any]]:
    """Public signing keys a device should trust, newest first (agent.kernel.verify.TrustedKey entries).

    A key retired in the future is still listed, with its date, so bundles it
    signed keep installing until then; a key past its date is left out.
    The first key is created here when settings allow it, so the very first
    device enrolled already trusts the key that will sign its bundles.
    """
    try:
        SigningKey.current()
    except ImproperlyConfigured as exc:
        log.error("devices get an empty trust store", extra={"error": str(exc)})
    now = timezone.now()
    return [key.as_trusted() for key in SigningKey.objects.all() if key.is_usable(now)]

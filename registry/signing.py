"""Signing the desired documents the bridge publishes, with the bundle signing keys."""

from __future__ import annotations

import logging

from django.core.exceptions import ImproperlyConfigured

from agent.kernel import protocol
from agent.kernel.verify import signed_desired
from registry.models import SigningKey

log = logging.getLogger(__name__)


def sign_desired(message: protocol.Desired) -> protocol.Desired:
    """Return ``message`` with its signature, so a broker cannot forge or alter one.

    Without a usable key the message goes out unsigned and devices refuse it:
    the safe failure. The log says how to fix it.
    """
    try:
        signer = SigningKey.current().signer()
    except ImproperlyConfigured as exc:
        log.error("desired state not signed", extra={"generation": message.generation, "error": str(exc)})
        return message
    return signed_desired(message, signer.sign)

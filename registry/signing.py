"""Signing the desired documents the bridge publishes, with the bundle signing keys."""

from __future__ import annotations

import logging
from collections.abc import Callable

from django.core.exceptions import ImproperlyConfigured

from agent.kernel import protocol
from agent.kernel.verify import signed_desired
from registry.models import SigningKey

log = logging.getLogger(__name__)


DesiredSigner = Callable[[protocol.Desired], protocol.Desired]


def desired_signer() -> DesiredSigner:
    """What signs desired documents with the current key, loaded once for any number of them.

    Without a usable key it returns documents unsigned, and devices refuse
    them: the safe failure. The log says how to fix it, once.
    """
    try:
        signer = SigningKey.current().signer()
    except ImproperlyConfigured as exc:
        log.error("desired state not signed", extra={"error": str(exc)})
        return lambda message: message
    return lambda message: signed_desired(message, signer.sign)

"""The trust store handed to devices: public keys that may sign bundles and desired state."""

from __future__ import annotations

from typing import Any


def trust_store() -> list[dict[str, Any]]:
    """Public signing keys a device should trust, newest first.

    Empty until the registry issues signing keys; enrollment already carries
    the field so devices enrolled now receive keys through a keyring update.
    """
    return []

"""The keys a device trusts, and the one way it learns new ones: a signed keyring update.

Everything that verifies a signature on the device (the desired state, the
updater's bundles, the installed model at start) asks the same ``Trust``, so
a key learnt while checking one is known to all. The keyring comes from the
last applied keyring update (``keyring.json``), else from the trust store
handed out at enrollment (``trust.json``).
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import TypeVar

from agent.config import AgentConfig, atomic_write
from agent.kernel import verify

log = logging.getLogger(__name__)

_T = TypeVar("_T")


def authorization(config: AgentConfig) -> str:
    """The device's HTTP Basic credentials for the control plane."""
    device = config.device
    return "Basic " + base64.b64encode(f"{device.id}:{device.secret}".encode()).decode("ascii")


def load_keyring(config: AgentConfig) -> verify.Keyring:
    """The keys this device trusts: the last applied keyring update, else the enrollment trust store."""
    path = config.data_dir / "keyring.json"
    try:
        if path.exists():
            document = json.loads(path.read_bytes())
            return verify.Keyring.from_trust_store(document["keys"], int(document["sequence"]))
        return verify.Keyring.from_trust_store(json.loads(config.trust_store_path.read_bytes()))
    except (OSError, ValueError, KeyError, TypeError, verify.VerificationError) as exc:
        # Nothing verifies against an empty keyring: the device refuses every update, loudly.
        log.error("keyring unreadable", extra={"error": str(exc)})
        return verify.Keyring()


class Trust:
    """The device keyring, shared by every verifier on the device; safe to use from any thread."""

    def __init__(self, config: AgentConfig, *, timeout_s: float | None = None) -> None:
        self.config = config
        self.keyring = load_keyring(config)
        self._timeout_s = config.updater.download_timeout_s if timeout_s is None else timeout_s
        # The desired state and the updater verify on their own threads: one refresh at a time.
        self._lock = threading.Lock()

    def verify(self, check: Callable[[verify.Keyring], _T]) -> _T:
        """Run ``check`` with the keyring; when it meets an unknown key, refresh once and run it again.

        A key rotated in after this device enrolled is learnt from a signed
        keyring update; ``verify.UnknownKey`` still comes out when none names it.
        """
        try:
            return check(self.keyring)
        except verify.UnknownKey:
            if not self.refresh():
                raise
            return check(self.keyring)

    def refresh(self) -> bool:
        """Fetch the control plane's latest signed keyring update and apply it; True when it changed."""
        with self._lock:
            return self._fetch()

    def _fetch(self) -> bool:
        url = self.config.server.url + "/api/v1/keyring"
        request = urllib.request.Request(url, headers={"Authorization": authorization(self.config)})  # noqa: S310
        try:
            with urllib.request.urlopen(request, timeout=self._timeout_s) as response:  # noqa: S310
                document = json.loads(response.read(1024 * 1024))
        except (urllib.error.URLError, OSError, ValueError) as exc:
            log.warning("keyring refresh failed", extra={"error": str(exc)})
            return False
        update = document.get("update") if isinstance(document, dict) else None
        if not update:
            return False
        try:
            keyring = verify.apply_keyring_update(self.keyring, update)
        except verify.VerificationError as exc:
            log.warning("keyring update refused", extra={"reason": exc.reason, "detail": exc.detail})
            return False
        payload = {"sequence": keyring.sequence, "keys": keyring.to_trust_store()}
        atomic_write(self.config.data_dir / "keyring.json", json.dumps(payload).encode(), mode=0o644)
        self.keyring = keyring
        log.info("keyring updated", extra={"sequence": keyring.sequence, "keys": len(keyring.keys)})
        return True

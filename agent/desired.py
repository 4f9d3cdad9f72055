"""The desired state on a device: one owner, and nothing sees a document before it is verified.

Every document, whether it arrives on ``desired`` or was stored before a
restart, goes through ``DesiredState`` and in this order:

1. the same document again (the retained copy, redelivered on each
   reconnect) changes nothing;
2. its signature, by a key of the device keyring (``agent.trust``), which is
   refreshed once from the control plane when the key is unknown;
3. what the signed bytes say (``verify.check_desired``): it names this
   device, its generation is newer than the newest verified one, and it has
   not expired;
4. only then is it saved to ``desired.json`` (atomically) and handed to each
   listener, once.

A refused document is reported as the event ``desired_rejected`` with its
reason (``bad_signature``, ``unknown_key``, ``wrong_device``, ``stale``,
``expired``...) and goes nowhere else: not to the disk, not to any listener,
not into the generation this device reports. So neither a forged document
(even with a huge generation) nor a genuine one replayed from another device
or from the past can change what the device does, or make it ignore the
genuine documents that follow.

The control plane re-issues every document before it expires. When the one
held here expires anyway (updates are being withheld: a freeze), the device
keeps serving with it, sends ``desired_expired`` once and says
``desired_expired`` in ``reported`` until a newer document arrives.

Documents from the network are verified on this component's own thread: a
keyring refresh is an HTTP request, and the run loop must not wait on it.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from datetime import datetime
from typing import Any, Protocol

from agent.config import AgentConfig, atomic_write
from agent.kernel import protocol, verify
from agent.trust import Trust

log = logging.getLogger(__name__)

DesiredListener = Callable[[protocol.Desired], None]


class Reporter(Protocol):
    """Where refusals and a newly applied generation are said (``agent.runtime.Runtime``)."""

    def report(self, **fields: Any) -> None: ...

    def set_reported(self, **fields: Any) -> None: ...

    def event(self, kind: str, **data: Any) -> None: ...


class DesiredState:
    """Verifies, stores and broadcasts the desired document; ``current`` is the newest verified one."""

    expiry_check_s = 60.0
    """How often the worker looks whether the document held has expired."""

    def __init__(self, config: AgentConfig, trust: Trust, reporter: Reporter) -> None:
        self.config = config
        self.trust = trust
        self.reporter = reporter
        # Held while a document is checked, stored and broadcast, and while a listener
        # subscribes: every listener sees each verified document once, in order.
        self._lock = threading.RLock()
        self._listeners: list[DesiredListener] = []
        self._inbox: queue.Queue[protocol.Desired | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._expired_said = False
        self.current: protocol.Desired | None = self._load()

    # --- listeners -------------------------------------------------------------------

    def subscribe(self, listener: DesiredListener) -> None:
        """Hand ``listener`` every verified document from now on, starting with the current one."""
        with self._lock:
            self._listeners.append(listener)
            if self.current is not None:
                listener(self.current)

    # --- documents ---------------------------------------------------------------------

    def submit(self, desired: protocol.Desired) -> None:
        """Queue a document from the network; it is offered on this component's thread."""
        self._inbox.put(desired)

    def offer(self, desired: protocol.Desired, *, now: datetime | None = None) -> bool:
        """Verify ``desired`` and only then store it and hand it to every listener; True when it was taken."""
        with self._lock:
            current = self.current
            if desired == current:
                return False  # the retained copy, delivered again on reconnect
            try:
                self.trust.verify(lambda keyring: verify.verify_desired(desired, keyring))
                verify.check_desired(desired, device_id=self.config.device.id, newest=current, now=now)
            except verify.VerificationError as exc:
                self._refuse(desired, exc)
                return False
            atomic_write(self.config.desired_path, protocol.encode(desired), mode=0o600)
            self.current = desired
            log.info("desired stored", extra={"generation": desired.generation})
            for listener in list(self._listeners):
                listener(desired)
        self.check_expiry(now)
        self.reporter.report()
        return True

    def check_expiry(self, now: datetime | None = None) -> bool:
        """Say once, and in ``reported`` from then on, that the document held has expired; True if it has."""
        current = self.current
        expired = current is not None and current.expires <= (now or verify.utcnow())
        if expired == self._expired_said:
            return expired
        self._expired_said = expired
        if expired and current is not None:
            log.warning(
                "desired expired",
                extra={"generation": current.generation, "expires": current.expires.isoformat()},
            )
            self.reporter.event("desired_expired", generation=current.generation, expires=current.expires.isoformat())
        self.reporter.set_reported(desired_expired=expired)
        return expired

    def _refuse(self, desired: protocol.Desired, exc: verify.VerificationError) -> None:
        log.warning("desired rejected", extra={"generation": desired.generation, "reason": exc.reason})
        # Only what the signature vouches for is repeated back, and only as the refusal's detail.
        self.reporter.event(
            "desired_rejected",
            generation=desired.generation,
            reason=exc.reason,
            detail=exc.detail[:300],
            current=self.current.generation if self.current else 0,
        )

    def _load(self) -> protocol.Desired | None:
        """The stored document, verified again: the disk is not trusted more than the network."""
        path = self.config.desired_path
        try:
            message = protocol.decode("desired", path.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, protocol.ProtocolError) as exc:
            log.warning("stored desired unreadable", extra={"path": str(path), "error": str(exc)})
            return None
        if not isinstance(message, protocol.Desired):
            return None
        try:
            verify.verify_desired(message, self.trust.keyring)
            # Expired or not, it is what this device last converged on: it keeps serving with it.
            verify.check_desired(message, device_id=self.config.device.id, newest=None, now=message.issued_at)
        except verify.VerificationError as exc:
            log.warning("stored desired not verified", extra={"path": str(path), "reason": exc.reason})
            return None
        return message

    # --- the worker ----------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._work, name="desired", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._inbox.put(None)
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _work(self) -> None:
        while True:
            try:
                desired = self._inbox.get(timeout=self.expiry_check_s)
            except queue.Empty:
                self.check_expiry()
                continue
            if desired is None:
                return
            try:
                self.offer(desired)
            except OSError as exc:
                # A full or failing disk costs this document (the broker retains it), never the thread.
                log.error("desired not stored", extra={"generation": desired.generation, "error": str(exc)})

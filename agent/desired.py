"""The desired state on a device: one owner, and nothing sees a document before it is verified.

Every document, whether it arrives on ``desired`` or was stored before a
restart, goes through ``DesiredState`` and in this order:

1. its generation: older than the newest verified one is ignored, and the
   same document again (the retained copy, redelivered on each reconnect)
   changes nothing;
2. its signature, by a key of the device keyring (``agent.trust``), which is
   refreshed once from the control plane when the key is unknown;
3. only then is it saved to ``desired.json`` (atomically) and handed to each
   listener, once.

A refused document is reported (event ``desired_rejected``, ``reported``
phase ``failed``) and goes nowhere else: not to the disk, not to any
listener. So a forged document, even with a huge generation, can neither
change what the device does nor make it ignore the genuine ones that follow.

Documents from the network are verified on this component's own thread: a
keyring refresh is an HTTP request, and the run loop must not wait on it.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
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

    def offer(self, desired: protocol.Desired) -> bool:
        """Verify ``desired`` and only then store it and hand it to every listener; True when it was taken."""
        with self._lock:
            current = self.current
            if current is not None and desired.generation < current.generation:
                log.warning("desired ignored", extra={"generation": desired.generation, "current": current.generation})
                return False
            if desired == current:
                return False  # the retained copy, delivered again on reconnect
            try:
                self.trust.verify(lambda keyring: verify.verify_desired(desired, keyring))
            except verify.VerificationError as exc:
                self._refuse(desired, exc)
                return False
            atomic_write(self.config.desired_path, protocol.encode(desired), mode=0o600)
            self.current = desired
            log.info("desired stored", extra={"generation": desired.generation})
            for listener in list(self._listeners):
                listener(desired)
        self.reporter.report()
        return True

    def _refuse(self, desired: protocol.Desired, exc: verify.VerificationError) -> None:
        log.warning("desired rejected", extra={"generation": desired.generation, "reason": exc.reason})
        self.reporter.event(
            "desired_rejected", generation=desired.generation, reason=exc.reason, detail=exc.detail[:300]
        )
        self.reporter.set_reported(phase="failed", error=f"desired rejected: {exc}"[:2000])

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
        while (desired := self._inbox.get()) is not None:
            try:
                self.offer(desired)
            except OSError as exc:
                # A full or failing disk costs this document (the broker retains it), never the thread.
                log.error("desired not stored", extra={"generation": desired.generation, "error": str(exc)})

"""The ``run`` loop: config, MQTT link, outbox, heartbeats, commands and desired state, wired together.

One thread does the work. paho's network thread and the outbox's flusher
only put items on ``Runtime.inbox``; the loop takes them, acts, and pumps
committed telemetry out whenever the link is up and the in-flight window
has room. Later parts of the agent (inference, capture, updater, escalation)
plug in as ``Component`` objects: they append telemetry to ``runtime.outbox``,
register command handlers and subscribe to verified desired documents
(``runtime.desired_state``, the one owner of the desired state).
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import socket
import sqlite3
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Any, Protocol

import paho.mqtt.client as mqtt

from agent import __version__, system
from agent.config import AgentConfig
from agent.desired import DesiredState
from agent.kernel import protocol
from agent.mqtt import Link
from agent.outbox import Outbox
from agent.trust import Trust

log = logging.getLogger(__name__)

# The loop wakes at least this often to resend unacknowledged records and run tickers.
_IDLE_WAKE_S = 1.0
# After a (re)connect the telemetry backlog waits behind what components hold it for (escalations), this long
# at most: the reported state and events go first, then escalations, then the bulk backlog.
BACKLOG_HOLD_MAX_S = 60.0

CommandHandler = Callable[[protocol.Command], dict[str, Any]]


class Notifier:
    """systemd's sd_notify protocol, spoken directly: readiness, watchdog pings, stopping.

    A no-op outside a ``Type=notify`` unit (no NOTIFY_SOCKET). The watchdog is
    pinged from the run loop itself, so a loop stuck on a hung disk or a
    deadlock stops the pings and systemd restarts the agent.
    """

    def __init__(self, address: str | None = None) -> None:
        address = os.environ.get("NOTIFY_SOCKET") if address is None else address
        if address and address.startswith("@"):
            address = "\0" + address[1:]  # abstract namespace socket
        self.address = address or None
        watchdog_usec = os.environ.get("WATCHDOG_USEC", "")
        # Ping at half the period systemd allows, as sd_watchdog_enabled(3) advises.
        self.interval = int(watchdog_usec) / 2e6 if watchdog_usec.isdigit() and int(watchdog_usec) > 0 else None
        self._last = 0.0

    def notify(self, state: str) -> None:
        if self.address is None:
            return
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.sendto(state.encode(), self.address)
        except OSError as exc:
            log.warning("sd_notify failed", extra={"state": state.split("\n")[0], "error": str(exc)})

    def watchdog(self) -> None:
        now = time.monotonic()
        if self.interval is not None and now - self._last >= self.interval:
            self._last = now
            self.notify("WATCHDOG=1")


class Component(Protocol):
    """A part of the agent started and stopped with the runtime."""

    def start(self, runtime: Runtime) -> None: ...

    def stop(self) -> None: ...


class Runtime:
    def __init__(
        self, config: AgentConfig, *, components: list[Component] | None = None, trust: Trust | None = None
    ) -> None:
        self.config = config
        self.inbox: queue.Queue[tuple[str, Any]] = queue.Queue()
        self.stopping = threading.Event()
        self.components = list(components or [])
        self.model_version: str | None = None
        # What the updater last said (phase, error, model, fallback): every later report repeats it,
        # so a reconnect does not turn a failed or degraded device back into an idle-looking one.
        self.reported_fields: dict[str, Any] = {}
        self.commands: dict[str, CommandHandler] = {"ping": self._ping, "flush": self._flush}
        self.notifier = Notifier()
        config.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        settings = config.outbox
        self.outbox = Outbox(
            config.outbox_path,
            max_bytes=settings.max_bytes,
            commit_interval_s=settings.commit_interval_ms / 1000,
            commit_records=settings.commit_records,
            max_in_flight=settings.max_in_flight,
            resend_after_s=settings.resend_after_s,
            live_share=settings.live_share,
            on_commit=lambda: self.inbox.put(("wake", None)),
        )
        self._dropped_reported = self.outbox.stats().dropped_total
        self._reconnect_callbacks: list[Callable[[], None]] = []
        self._backlog_holds: list[Callable[[], bool]] = []
        self._connected_at: float | None = None
        self.trust = trust or Trust(config)
        self.desired_state = DesiredState(config, self.trust, self)
        self.link = Link(
            config.mqtt,
            device_id=config.device.id,
            secret=config.device.secret,
            on_message=lambda suffix, message: self.inbox.put(("message", message)),
            on_connected=lambda: self.inbox.put(("connected", None)),
        )

    # --- extension points ------------------------------------------------------

    def register_command(self, name: str, handler: CommandHandler) -> None:
        self.commands[name] = handler

    def on_reconnect(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` (from the main loop) each time the link to the broker comes up."""
        self._reconnect_callbacks.append(callback)

    def hold_backlog_while(self, pending: Callable[[], bool]) -> None:
        """Keep the telemetry backlog back after a (re)connect while ``pending()`` (at most BACKLOG_HOLD_MAX_S)."""
        self._backlog_holds.append(pending)

    def set_reported(self, **fields: Any) -> None:
        """Change what every later ``reported`` says (phase, error, model, fallback) and publish it."""
        self.reported_fields.update(fields)
        self.report()

    def report(self, **fields: Any) -> None:
        """Publish ``reported``: the generation applied plus whatever the caller knows (phase, model)."""
        desired = self.desired_state.current
        values: dict[str, Any] = {
            "generation": desired.generation if desired else 0,
            "phase": "idle",
            "agent_version": __version__,
            "model_version": self.model_version,
        }
        values.update(self.reported_fields)
        values.update(fields)
        if self.link.connected.is_set():
            self.link.publish("reported", protocol.Reported(**values))

    def event(self, kind: str, **data: Any) -> None:
        """Publish an event now when connected; events are informative and not kept in the outbox."""
        if self.link.connected.is_set():
            self.link.publish("events", protocol.Event(kind=kind, data=data))
        else:
            log.info("event not sent", extra={"kind": kind, "reason": "offline"})

    # --- the loop ----------------------------------------------------------------

    def run(self) -> int:
        """Run until SIGTERM/SIGINT or ``stop()``; returns the process exit code."""
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._on_signal)
            signal.signal(signal.SIGINT, self._on_signal)
        log.info(
            "starting",
            extra={
                "device": self.config.device.id,
                "broker": self.config.mqtt.url,
                "data_dir": str(self.config.data_dir),
                "agent_version": __version__,
            },
        )
        for component in self.components:
            component.start(self)
        self.desired_state.start()
        self.link.start()
        # Ready once the outbox is open and the link is started: the broker
        # may be away for hours and the agent must keep working meanwhile.
        self.notifier.notify("READY=1")
        interval = self.config.agent.heartbeat_interval_s
        next_heartbeat = time.monotonic()
        next_report = next_heartbeat + self.config.agent.report_interval_s
        try:
            while not self.stopping.is_set():
                now = time.monotonic()
                if now >= next_report:
                    # The same document again: idempotent at the control plane, which keeps the newest.
                    self.report()
                    next_report = now + self.config.agent.report_interval_s
                if now >= next_heartbeat:
                    self.heartbeat()
                    # Keep the cadence, but after a stall (suspend, a slow disk) skip
                    # the missed beats rather than send them back to back.
                    next_heartbeat += interval
                    if next_heartbeat <= now:
                        next_heartbeat = now + interval
                self._wait(min(_IDLE_WAKE_S, max(0.0, min(next_heartbeat, next_report) - time.monotonic())))
                self._report_drops()
                self.pump()
                self.notifier.watchdog()
        finally:
            self._shutdown()
        return 0

    def stop(self) -> None:
        self.stopping.set()
        self.inbox.put(("stop", None))

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        log.info("stopping", extra={"signal": signal.Signals(signum).name})
        self.stop()

    def _wait(self, timeout: float) -> None:
        """Handle the next inbox item (waiting up to ``timeout``), then whatever else is queued."""
        try:
            item = self.inbox.get(timeout=timeout)
        except queue.Empty:
            return
        while True:
            self._handle(*item)
            try:
                item = self.inbox.get_nowait()
            except queue.Empty:
                return

    def _handle(self, kind: str, value: Any) -> None:
        if kind == "connected":
            # Whatever was in flight on the old connection may be lost: send it again.
            self.outbox.requeue()
            self._connected_at = time.monotonic()
            self.report()
            for callback in self._reconnect_callbacks:
                try:
                    callback()
                except Exception:
                    log.exception("reconnect callback failed")
        elif kind == "message":
            try:
                self._dispatch(value)
            except (OSError, sqlite3.Error):
                # A full or failing disk costs this message (an unapplied ack is
                # repeated by the next one, desired is retained), never the loop.
                log.exception("message failed", extra={"message_type": type(value).__name__})

    def _dispatch(self, message: protocol.Message) -> None:
        if isinstance(message, protocol.Ack):
            removed = self.outbox.ack(message.seq)
            log.debug("ack", extra={"seq": message.seq, "removed": removed})
        elif isinstance(message, protocol.Command):
            self._command(message)
        elif isinstance(message, protocol.Desired):
            self.desired_state.submit(message)

    def _shutdown(self) -> None:
        self.notifier.notify("STOPPING=1")
        self.desired_state.stop()
        for component in reversed(self.components):
            component.stop()
        # Make every appended record durable before saying goodbye.
        self.outbox.commit()
        self.link.stop()
        stats = self.outbox.stats()
        self.outbox.close()
        log.info(
            "stopped", extra={"outbox_depth": stats.depth, "last_seq": stats.last_seq, "acked_seq": stats.acked_seq}
        )

    # --- telemetry ---------------------------------------------------------------

    def heartbeat(self) -> int:
        stats = self.outbox.stats()
        beat = system.heartbeat(
            self.config.data_dir,
            outbox_depth=stats.depth,
            model_version=self.model_version,
            outbox_bytes=stats.bytes,
            outbox_dropped_total=stats.dropped_total,
        )
        seq = self.outbox.append("heartbeat", beat.model_dump(mode="json", exclude_none=True))
        # A heartbeat is rare and wanted now: do not wait for the batch timer.
        self.outbox.commit()
        log.debug("heartbeat", extra={"seq": seq, "outbox_depth": stats.depth})
        return seq

    def backlog_held(self) -> bool:
        """Whether the telemetry backlog waits now: just (re)connected and a component still has priority work."""
        if self._connected_at is None or time.monotonic() - self._connected_at > BACKLOG_HOLD_MAX_S:
            return False
        return any(pending() for pending in self._backlog_holds)

    def pump(self) -> int:
        """Publish committed telemetry while connected and the in-flight window has room (and nothing holds it)."""
        sent = 0
        if self.backlog_held():
            return sent
        while self.link.connected.is_set():
            batch = self.outbox.next_batch()
            if batch is None:
                break
            info = self.link.publish_raw("telemetry", batch.payload)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                # The connection dropped under us; on_connect requeues and we go again.
                log.info("publish deferred", extra={"rc": info.rc})
                self.outbox.requeue()
                break
            log.debug(
                "telemetry sent", extra={"records": len(batch.seqs), "floor": batch.floor, "bytes": len(batch.payload)}
            )
            sent += len(batch.seqs)
        return sent

    def _report_drops(self) -> None:
        dropped = self.outbox.dropped_total
        if dropped > self._dropped_reported and self.link.connected.is_set():
            self.event("buffer_overflow", dropped=dropped - self._dropped_reported, dropped_total=dropped)
            self._dropped_reported = dropped

    # --- commands and desired state --------------------------------------------------

    def _command(self, command: protocol.Command) -> None:
        handler = self.commands.get(command.name)
        if handler is None:
            log.warning("command unsupported", extra={"command": command.name, "command_id": command.id})
            self.event("command_unsupported", command_id=command.id, name=command.name)
            return
        log.info("command", extra={"command": command.name, "command_id": command.id})
        try:
            handler(command)
        except (OSError, ValueError) as exc:
            log.warning("command failed", extra={"command": command.name, "command_id": command.id, "error": str(exc)})
            self.event("command_failed", command_id=command.id, name=command.name, error=str(exc)[:500])

    def _ping(self, command: protocol.Command) -> dict[str, Any]:
        data = {"command_id": command.id, "agent_version": __version__}
        self.event("pong", **data)
        return data

    def _flush(self, command: protocol.Command) -> dict[str, Any]:
        self.outbox.commit()
        self.outbox.requeue()
        sent = self.pump()
        data = {"command_id": command.id, "sent": sent, "outbox_depth": self.outbox.stats().depth}
        self.event("flushed", **data)
        return data

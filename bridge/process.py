"""The MQTT bridge: device messages in, desired state and acknowledgements out.

Several bridges may run side by side: they subscribe through one shared
subscription, so the broker hands each message to one of them, and every
write they make is idempotent (presence by time, telemetry by (device, seq)).

paho's network thread only queues what arrives; worker threads validate
and store it, so a slow database never stalls keepalives, and a bad message
is logged, counted and dropped without touching the rest. When the queue is
full the network thread waits for room (``full_wait_s``) before it drops a
message: the broker's in-flight window to the bridge fills meanwhile and
the broker holds the rest, so a reconnect storm is absorbed, not dropped.

With a ``client_id`` of its own the bridge keeps a persistent session,
which its next start resumes, and acknowledges a message to the broker
only once it is stored or refused for good (``bridge.acks``): one it had
not stored when it died is still the broker's to deliver again. Without
one, paho acknowledges on receipt.

A worker cannot die of a message: whatever a batch raises, the batch is
retried one message at a time and a message that still fails is rejected
(``internal_error``) on its own. Each worker marks its progress every loop
(``worker_progress``, exported to /metrics), so a stuck worker shows even
while the process lives; one that dies anyway is restarted by ``supervise``.

The worker drains what is queued (up to ``batch_messages``) and stores all
the telemetry in it with one multi-row insert, then acknowledges per device:
under load the cost of a transaction is shared by hundreds of messages, and
when idle a message is stored as soon as it arrives.
"""

from __future__ import annotations

import bisect
import gc
import logging
import queue
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, NamedTuple
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from django.conf import settings
from django.db import DatabaseError, close_old_connections, connection, transaction
from django.utils import timezone
from paho.mqtt.enums import CallbackAPIVersion

from agent.kernel import protocol
from bridge.acks import ArrivalAcks, Pending
from bridge.commands import CommandPublisher
from bridge.desired import DesiredPublisher
from fleet.models import Device
from telemetry import services as telemetry
from telemetry.exporter import LAG_BUCKETS
from telemetry.ingest import trusted_time
from telemetry.models import BridgeStats, DeviceClock

_LAG_KEYS = [str(bound) for bound in LAG_BUCKETS] + ["+Inf"]
# What the bridge reads of a device for any message; its JSON documents are left unparsed.
_INGEST_FIELDS = ("pk", "device_id", "revoked_at", "online", "telemetry_acked_seq")

# How long an idle worker waits on its inbox before it marks progress again.
_IDLE_TICK_S = 1.0

log = logging.getLogger(__name__)

_Item = tuple[str, bytes | bytearray, Pending | None]
"""A queued message: topic, payload, and its acknowledgement to send once the bridge is done with it."""
_Inbox = queue.Queue[_Item | None]


class _Telemetry(NamedTuple):
    """A telemetry message that passed every check, waiting to be stored."""

    position: int  # its place in the drained batch, for its verdict
    topic: str
    device: Device
    message: protocol.Telemetry


class _Other(NamedTuple):
    """A message other than telemetry that passed every check, waiting to be applied."""

    position: int  # its place in the drained batch, for its verdict
    topic: str
    device: Device
    message: protocol.Message


@dataclass(frozen=True)
class BridgeConfig:
    url: str
    username: str | None = None
    password: str | None = None
    shared_group: str | None = "edgefleet-bridge"
    max_payload: int = protocol.MAX_PAYLOAD_BYTES
    keepalive: int = 30
    # A stable client id (BRIDGE_CLIENT_ID) gives the bridge a persistent session: the broker keeps
    # what it had not acknowledged, and what arrives meanwhile, for its next start under that id.
    # Empty: a fresh id and a clean session on every start.
    client_id: str = ""
    desired_poll_s: float = 1.0
    queue_size: int = 10_000
    # A full inbox holds paho's network thread up to this long per message before dropping it: the
    # broker's in-flight window to the bridge then fills and the broker queues the rest, so a burst
    # (thousands of devices reconnecting at once) waits instead of losing reports and presence.
    full_wait_s: float = 5.0
    batch_messages: int = 500
    stats_interval_s: float = 10.0
    workers: int = 2
    # The window around the receiving time a device's clock must fall in.
    max_ahead: timedelta = protocol.MAX_AHEAD
    max_age: timedelta = protocol.MAX_AGE

    @classmethod
    def from_settings(cls, **overrides: Any) -> BridgeConfig:
        values: dict[str, Any] = {
            "url": settings.MQTT_URL,
            "username": settings.MQTT_USERNAME,
            "password": settings.MQTT_PASSWORD,
            "shared_group": settings.MQTT_SHARED_GROUP or None,
            "max_payload": settings.MQTT_MAX_PAYLOAD,
            "keepalive": settings.MQTT_KEEPALIVE,
            "batch_messages": settings.BRIDGE_BATCH_MESSAGES,
            "stats_interval_s": settings.BRIDGE_STATS_INTERVAL_S,
            "workers": settings.BRIDGE_WORKERS,
            "max_ahead": timedelta(seconds=settings.BRIDGE_CLOCK_MAX_AHEAD_S),
            "max_age": timedelta(days=settings.BRIDGE_CLOCK_MAX_AGE_DAYS),
            "client_id": settings.BRIDGE_CLIENT_ID or "",
        }
        values.update(overrides)
        return cls(**values)


class Bridge:
    def __init__(self, config: BridgeConfig) -> None:
        self.config = config
        self.accepted: Counter[str] = Counter()
        self.rejected: Counter[str] = Counter()
        # Ingest counters exported to /metrics through the database (telemetry.exporter).
        self.records = 0
        self.batches = 0
        self.lag_buckets: Counter[str] = Counter()
        self.lag_sum = 0.0
        # Records and events from devices whose clocks were ahead, stored at the receiving time.
        self.restamped = 0
        # Per worker: when it last went round its loop (wall clock) and how often it was restarted.
        self.worker_progress: dict[str, float] = {}
        self.worker_restarts: Counter[str] = Counter()
        self._started_at = timezone.now()
        self._exported_at = 0.0
        # One inbox per worker, chosen by device: each device's messages stay in
        # order (presence and reported state depend on it), while one worker's
        # wait on the database overlaps with another's decoding.
        per_inbox = max(1, config.queue_size // max(1, config.workers))
        self._inboxes: list[_Inbox] = [queue.Queue(maxsize=per_inbox) for _ in range(max(1, config.workers))]
        self._stopping = threading.Event()
        self._connected = threading.Event()
        self._progress = threading.Condition()
        self._threads: list[threading.Thread] = []
        self._workers: dict[str, tuple[threading.Thread, _Inbox]] = {}
        client_id = config.client_id or f"edgefleet-bridge-{uuid.uuid4().hex[:8]}"
        self.client_id = client_id
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv311,
            clean_session=not self.persistent_session,
            # After storing only with a session of its own (see ``persistent_session``).
            manual_ack=self.persistent_session,
        )
        self.acks = ArrivalAcks(self.client.ack)
        if config.username:
            self.client.username_pw_set(config.username, config.password)
        if urlsplit(config.url).scheme == "mqtts":
            self.client.tls_set()
        self.client.reconnect_delay_set(min_delay=1, max_delay=60)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        self.desired = DesiredPublisher(self._publish, poll_s=config.desired_poll_s)
        # Commands are polled as often as desired documents: an escalation's answer is awaited on the device.
        self.commands = CommandPublisher(self._publish, poll_s=config.desired_poll_s)

    @property
    def persistent_session(self) -> bool:
        """A session of its own, resumed by its next start, and acknowledgements only after storing.

        Only then: acknowledging after storing holds at most the broker's
        in-flight window for the bridge unacknowledged, and a broker left at
        Mosquitto's defaults (20 in flight, 1,000 queued per client) drops
        what overflows its queue in a burst of a few thousand devices, where
        acknowledging on receipt lets the bridge's inbox take the burst.
        deploy/mosquitto sets 100 and 100,000 (docs/operations.md).
        """
        return bool(self.config.client_id)

    # --- lifecycle -----------------------------------------------------------

    def start(self) -> None:
        parts = urlsplit(self.config.url)
        default_port = 8883 if parts.scheme == "mqtts" else 1883
        self.client.connect_async(parts.hostname or "127.0.0.1", parts.port or default_port, self.config.keepalive)
        self.client.loop_start()
        for i, inbox in enumerate(self._inboxes):
            self._start_worker(f"bridge-worker-{i}", inbox)
        for name, publisher in (("bridge-desired", self.desired), ("bridge-commands", self.commands)):
            thread = threading.Thread(
                target=publisher.run, args=(self._stopping, self._connected), name=name, daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def _start_worker(self, name: str, inbox: _Inbox) -> None:
        thread = threading.Thread(target=self._work, args=(inbox,), name=name, daemon=True)
        with self._progress:
            self.worker_progress[name] = time.time()
        thread.start()
        self._workers[name] = (thread, inbox)

    def supervise(self) -> list[str]:
        """Restart any worker thread that died; returns the names restarted.

        A worker catches everything a message can raise, so this is the last
        line: a thread that ended anyway (a bug in the loop itself) would
        leave its inbox, and so a share of the fleet's devices, unread while
        the process looked alive.
        """
        restarted: list[str] = []
        if self._stopping.is_set():
            return restarted
        # From this thread too: the report (with each worker's progress) keeps
        # coming while every worker is idle, or stuck.
        if time.monotonic() - self._exported_at >= self.config.stats_interval_s:
            close_old_connections()
            self.export_stats()
        for name, (thread, inbox) in list(self._workers.items()):
            if thread.is_alive():
                continue
            log.error("bridge worker died, restarting it", extra={"worker": name})
            with self._progress:
                self.worker_restarts[name] += 1
            self._start_worker(name, inbox)
            restarted.append(name)
        return restarted

    def workers_alive(self) -> dict[str, bool]:
        return {name: thread.is_alive() for name, (thread, _) in self._workers.items()}

    def stop(self) -> None:
        self._stopping.set()
        for inbox in self._inboxes:
            inbox.put(None)
        for thread in [*(t for t, _ in self._workers.values()), *self._threads]:
            thread.join(timeout=10)
        self.client.disconnect()
        self.client.loop_stop()

    def wait_connected(self, timeout: float) -> bool:
        """Wait until connected and subscribed (the broker confirmed every subscription)."""
        return self._connected.wait(timeout)

    def wait_for(self, predicate: Any, timeout: float) -> bool:
        """Block until ``predicate(bridge)`` holds after some message was handled."""
        with self._progress:
            return self._progress.wait_for(lambda: predicate(self), timeout)

    # --- paho callbacks (network thread: queue only) -------------------------

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        # Message ids name messages on one connection: what waits from an earlier one is never acknowledged.
        self.acks.new_connection()
        if reason.is_failure:
            log.error("bridge connection refused", extra={"broker": self.config.url, "reason": str(reason)})
            return
        group = self.config.shared_group
        prefix = f"$share/{group}/" if group else ""
        client.subscribe([(f"{prefix}{protocol.TOPIC_ROOT}/+/{s}", 1) for s in protocol.DEVICE_TO_CLOUD])
        log.info("bridge connected", extra={"broker": self.config.url, "shared_group": group or "none"})

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reasons: Any, props: Any) -> None:
        # Ready only once the broker confirms the subscriptions: a device message
        # published between CONNACK and SUBACK would otherwise pass the bridge by.
        refused = [str(r) for r in reasons if r.is_failure]
        if refused:
            log.error("bridge subscriptions refused", extra={"reasons": ",".join(refused)})
            return
        self._connected.set()

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        self._connected.clear()
        # Before paho reconnects: an acknowledgement queued from now on would reach the next connection,
        # where its message id may name another message. The broker sends these again (persistent
        # session) or to another bridge (a broker that re-dispatches a shared subscription's messages).
        forgotten = self.acks.new_connection()
        if forgotten:
            log.info("unacknowledged messages left to the broker", extra={"messages": forgotten})
        if not self._stopping.is_set():
            log.info("bridge disconnected", extra={"reason": str(reason), "note": "paho reconnects with backoff"})

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        parts = message.topic.split("/", 3)
        inbox = self._inboxes[hash(parts[2]) % len(self._inboxes) if len(parts) > 2 else 0]
        # Tracked only when the bridge sends its own acknowledgements; otherwise paho has sent it already.
        pending = self.acks.arrived(message.mid, message.qos) if self.persistent_session else None
        try:
            # Waiting here is the backpressure: paho reads nothing more meanwhile (and, without a session
            # of its own, acknowledges the message when this returns).
            inbox.put((message.topic, message.payload, pending), timeout=self.config.full_wait_s)
        except queue.Full:
            # Still full: the database is far behind. Dropping is safe for telemetry (unacknowledged,
            # so the device resends), bounds memory, and keeps the keepalives going; a dropped report
            # comes again with the device's next periodic one. It is acknowledged all the same: within
            # a connection the broker never sends it again, and its place in the in-flight window
            # would be lost for good.
            self.acks.done(pending)
            self._count(self.rejected, "overloaded")
            log.warning("bridge inbox full, message dropped", extra={"topic": message.topic})

    # --- the worker ----------------------------------------------------------

    def _work(self, inbox: _Inbox) -> None:
        try:
            self._drain(inbox)
        finally:
            self.export_stats()
            connection.close()

    def _drain(self, inbox: _Inbox) -> None:
        name = threading.current_thread().name
        while True:
            with self._progress:
                self.worker_progress[name] = time.time()
            try:
                item = inbox.get(timeout=_IDLE_TICK_S)
            except queue.Empty:
                continue
            if item is None:
                return
            items = [item]
            stopping = False
            # Take what is already queued, never wait for more: batching adds
            # no latency when messages trickle in.
            while len(items) < self.config.batch_messages:
                try:
                    more = inbox.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stopping = True
                    break
                items.append(more)
            handled = False
            messages = [(topic, payload) for topic, payload, _ in items]
            unstored: set[int] = set()
            try:
                # Drop a connection the database closed or that outlived its age,
                # as Django does around each web request.
                close_old_connections()
                verdicts = self.handle_many(messages)
                handled = True
                unstored = self._retry_unstored(messages, verdicts)
                if time.monotonic() - self._exported_at >= self.config.stats_interval_s:
                    self.export_stats()
            except Exception:
                # handle_many never raises; this is for what surrounds it. A
                # batch not handled is lost to this bridge (telemetry is not
                # acknowledged, so its devices send it again).
                log.exception("bridge worker loop failed; going on", extra={"worker": name, "messages": len(items)})
                if not handled:
                    with self._progress:
                        self.rejected["internal_error"] += len(items)
                        self._progress.notify_all()
                try:
                    connection.close()
                except Exception:
                    log.warning("could not close the database connection", exc_info=True)
            for position, (_, _, pending) in enumerate(items):
                # What the database never took before the bridge stopped stays the broker's.
                if position not in unstored:
                    self.acks.done(pending)
            if stopping:
                return

    def _retry_unstored(self, items: list[tuple[str, bytes | bytearray]], verdicts: list[str]) -> set[int]:
        """Hold what the database refused while it is away (a restart, a failover), and apply it once it answers.

        A device sends its presence and reported state once per change and the
        broker's PUBACK to the device told it they arrived: were they
        dropped here, a rollout would wait for ever on a device that installed
        its version while the database restarted. So they wait, in order, with
        every later message of this inbox behind them. Telemetry waits too; it
        is stored idempotently by (device, seq). A message the database still
        refuses after ``_STORAGE_RETRIES`` attempts with the database answering
        is refused for good, as before (a bad row, not an outage).

        Returns the positions of what is still held because the bridge is
        stopping: those are not acknowledged, so the broker keeps them.
        """
        held = [i for i, verdict in enumerate(verdicts) if verdict == "storage_error"]
        attempts, delay = 0, _STORAGE_RETRY_S[0]
        while held and attempts < _STORAGE_RETRIES and not self._stopping.is_set():
            if not self._database_answers():
                with self._progress:
                    # Waiting on the database, not stuck: the probe's checks say what is wrong.
                    self.worker_progress[threading.current_thread().name] = time.time()
                self._stopping.wait(delay)
                delay = min(delay * 2, _STORAGE_RETRY_S[1])
                continue
            attempts += 1
            log.info("database answers again; applying held messages", extra={"messages": len(held)})
            verdicts = self.handle_many([items[i] for i in held])
            held = [i for i, verdict in zip(held, verdicts, strict=True) if verdict == "storage_error"]
        return set(held) if self._stopping.is_set() else set()

    @staticmethod
    def _database_answers() -> bool:
        try:
            connection.close()
            with connection.cursor() as cursor:
                cursor.execute("SELECT 1")
            return True
        except DatabaseError:
            return False

    def handle(self, topic: str, payload: bytes | bytearray) -> str:
        """Validate and apply one message (a batch of one); returns "ok" or the rejection reason. Never raises."""
        return self.handle_many([(topic, payload)])[0]

    def handle_many(self, items: list[tuple[str, bytes | bytearray]]) -> list[str]:
        """Apply queued messages in order; returns "ok" or the rejection reason of each. Never raises.

        Every message passes the same checks (topic, direction, ``decode``,
        known and unrevoked device). Telemetry is then stored together, with
        one transaction for the lot; anything else is applied one by one. A
        device's other messages wait until its telemetry before them is stored,
        so a last will after a final batch leaves the device offline.

        Should anything raise all the same, the messages without a verdict yet
        are handled again one at a time, so one bad message costs only itself.
        """
        verdicts: list[str | None] = [None] * len(items)
        try:
            self._handle_many(items, verdicts)
        except Exception:
            if len(items) == 1:
                device_id = _device_of(items[0][0])
                verdicts[0] = self._failed(device_id, items[0][0], "internal_error")
            else:
                log.warning(
                    "bridge batch failed, handling one message at a time",
                    extra={"messages": len(items)},
                    exc_info=True,
                )
                for index, item in enumerate(items):
                    if verdicts[index] is None:
                        verdicts[index] = self.handle(*item)
        return [verdict or "ok" for verdict in verdicts]

    def _handle_many(self, items: list[tuple[str, bytes | bytearray]], verdicts: list[str | None]) -> None:
        """``handle_many``'s work: sets each message's verdict as it is decided."""
        decoded: list[tuple[int, str, protocol.Message]] = []
        for index, (topic, payload) in enumerate(items):
            device_id = "?"
            try:
                device_id, suffix = protocol.parse_topic(topic)
                if suffix not in protocol.DEVICE_TO_CLOUD:
                    raise protocol.ProtocolError("wrong_direction", suffix)
                message = protocol.decode(
                    suffix,
                    payload,
                    max_bytes=self.config.max_payload,
                    max_age=self.config.max_age,
                    max_ahead=self.config.max_ahead,
                )
                decoded.append((index, device_id, message))
            except protocol.ProtocolError as exc:
                verdicts[index] = self._reject(device_id, topic, exc)
            except Exception:
                verdicts[index] = self._failed(device_id, topic, "internal_error")
        if not decoded:
            return
        try:
            # One query for every device of the batch, not one per message.
            known = self._devices({device_id for _, device_id, _ in decoded})
        except DatabaseError:
            log.exception("device lookup failed", extra={"messages": len(decoded)})
            for index, _, _ in decoded:
                verdicts[index] = "storage_error"
                self._count(self.rejected, "storage_error")
            return
        # Telemetry is stored together, and the rest applied together; a device's messages keep their
        # order, as what is gathered of one kind goes first when the same device sends the other kind.
        pending: list[_Telemetry] = []
        pending_devices: set[str] = set()
        others: list[_Other] = []
        other_devices: set[str] = set()
        for index, device_id, message in decoded:
            topic = items[index][0]
            device = self._admit(device_id, topic, known)
            if isinstance(device, str):
                verdicts[index] = device
            elif isinstance(message, protocol.Telemetry):
                if device_id in other_devices:
                    self._apply_many(others, verdicts)
                    others, other_devices = [], set()
                pending.append(_Telemetry(index, topic, device, message))
                pending_devices.add(device_id)
            else:
                if device_id in pending_devices:
                    self._store(pending, verdicts)
                    pending, pending_devices = [], set()
                others.append(_Other(index, topic, device, message))
                other_devices.add(device_id)
        if others:
            self._apply_many(others, verdicts)
        if pending:
            self._store(pending, verdicts)

    @staticmethod
    def _devices(device_ids: set[str]) -> dict[str, Device]:
        return Device.objects.only(*_INGEST_FIELDS).in_bulk(device_ids, field_name="device_id")

    def _admit(self, device_id: str, topic: str, known: dict[str, Device]) -> Device | str:
        """The device a decoded message came from, or the reason it is refused."""
        device = known.get(device_id)
        if device is None:
            return self._reject(device_id, topic, protocol.ProtocolError("unknown_device", device_id))
        if device.is_revoked:
            return self._reject(device_id, topic, protocol.ProtocolError("revoked_device", device_id))
        return device

    def _apply_many(self, others: list[_Other], verdicts: list[str | None]) -> None:
        """Apply messages other than telemetry (presence, reports, events) in one transaction.

        The devices' rows are locked once, in pk order (``lock_liveness``), the
        messages applied in arrival order to those rows in memory by the same
        rules ``record_presence``, ``record_seen`` and ``record_reported`` use,
        and the rows written back in one UPDATE: after a reconnect storm a
        batch of hundreds of statuses and reports costs a few statements, not
        a transaction each. Should the batch fail as a whole, each message is
        applied on its own (``_apply``), so one bad message costs only itself.
        """
        if len(others) == 1:
            other = others[0]
            verdicts[other.position] = self._apply(other.topic, other.device, other.message)
            return
        now = timezone.now()
        outcomes: dict[int, str] = {}
        changes: list[tuple[str, str]] = []
        restamped = 0
        try:
            with transaction.atomic():
                rows = Device.objects.lock_liveness({other.device.pk for other in others})
                for other in others:
                    row = rows[other.device.pk]
                    message = other.message
                    if isinstance(message, protocol.Status):
                        agent_version = message.agent_version or None
                        if row.apply_status(message.state == "online", now, agent_version=agent_version):
                            changes.append((other.device.device_id, message.state))
                        outcomes[other.position] = "ok"
                        continue
                    # Anything else a device sends proves it is alive.
                    row.apply_seen(now)
                    if isinstance(message, protocol.Reported):
                        row.apply_reported(message.model_dump(mode="json"), message.agent_version)
                    elif isinstance(message, protocol.Event):
                        try:
                            # Its own savepoint: an event the database refuses costs only itself.
                            with transaction.atomic():
                                restamped += self._record_event(row, message, now)
                        except DatabaseError:
                            outcomes[other.position] = "storage_error"
                            continue
                    outcomes[other.position] = "ok"
                Device.objects.save_liveness(rows.values())
        except Exception:
            log.warning(
                "batch of device messages failed, applying them one at a time",
                extra={"messages": len(others)},
                exc_info=True,
            )
            for other in others:
                verdicts[other.position] = self._apply(other.topic, other.device, other.message)
            return
        for other in others:
            # What the next messages of this batch see of the device (the telemetry path reads ``online``).
            other.device.online = rows[other.device.pk].online
            outcome = outcomes[other.position]
            if outcome == "ok":
                self._count(self.accepted, type(other.message).__name__.lower())
                verdicts[other.position] = "ok"
            else:
                verdicts[other.position] = self._failed(other.device.device_id, other.topic, outcome)
        for device_id, state in changes:
            log.info("device presence", extra={"device": device_id, "state": state})
        if restamped:
            self._count_restamped(restamped)

    def _apply(self, topic: str, device: Device, message: protocol.Message) -> str:
        """Apply one message other than telemetry in its own savepoint: a failed write leaves nothing half-done."""
        now = timezone.now()
        restamped = 0
        try:
            with transaction.atomic():
                if isinstance(message, protocol.Status):
                    agent_version = message.agent_version or None
                    if device.record_presence(message.state == "online", now, agent_version=agent_version):
                        log.info("device presence", extra={"device": device.device_id, "state": message.state})
                else:
                    # Anything else a device sends proves it is alive.
                    device.record_seen(now)
                    if isinstance(message, protocol.Reported):
                        device.record_reported(message.model_dump(mode="json"), message.agent_version)
                    elif isinstance(message, protocol.Event):
                        restamped = self._record_event(device, message, now)
        except DatabaseError:
            return self._failed(device.device_id, topic, "storage_error")
        except Exception:
            return self._failed(device.device_id, topic, "internal_error")
        if restamped:
            self._count_restamped(restamped)
        self._count(self.accepted, type(message).__name__.lower())
        return "ok"

    @staticmethod
    def _record_event(device: Device, message: protocol.Event, now: datetime) -> int:
        """Store an event, at the receiving time if the device's clock is ahead; returns 1 if it was restamped."""
        at = trusted_time(message.ts, now)
        if at is message.ts:
            telemetry.record_event(device, message)
            return 0
        DeviceClock.observe(device.pk, message.ts, now, 1)
        telemetry.record_event(device, message.model_copy(update={"ts": at}), sent=message)
        return 1

    def _store(self, items: list[_Telemetry], verdicts: list[str | None]) -> None:
        """Store telemetry messages together; if that fails, one by one, so only the culprit is refused.

        A refused message is not acknowledged and stays in its device's outbox.
        """
        reason = self._store_together(items)
        if reason is None:
            for item in items:
                verdicts[item.position] = "ok"
            return
        if len(items) == 1:
            verdicts[items[0].position] = reason
            return
        try:
            # Read the devices again: the rolled-back attempt may have moved their
            # presence and watermark in memory, and a watermark ahead of what is
            # stored would acknowledge records that are not.
            known = self._devices({item.device.device_id for item in items})
        except DatabaseError:
            log.exception("device lookup failed", extra={"telemetry_messages": len(items)})
            for item in items:
                verdicts[item.position] = "storage_error"
                self._count(self.rejected, "storage_error")
            return
        for item in items:
            device = self._admit(item.device.device_id, item.topic, known)
            if isinstance(device, str):
                verdicts[item.position] = device
                continue
            verdicts[item.position] = self._store_together([item._replace(device=device)]) or "ok"

    def _store_together(self, items: list[_Telemetry]) -> str | None:
        """Store telemetry messages in one transaction, then acknowledge each device once.

        Returns None, or the reason nothing was stored (logged; counted only
        for a single message, as a batch is then stored one message at a time).
        """
        now = timezone.now()
        devices = {item.device.pk: item.device for item in items}
        try:
            with transaction.atomic():
                stored = telemetry.store_batches([telemetry.Received(i.device, i.message) for i in items], seen_at=now)
                # Telemetry proves a device alive. Only now: store_batches has
                # locked every device of the batch in one statement, in pk
                # order. Locking an offline device before it (as this did) took
                # one lock out of that order, and two bridges sharing the
                # device's messages deadlocked: one held the offline device and
                # waited for a lower pk the other held while it waited for the
                # offline one.
                for pk in sorted(devices):
                    if not devices[pk].online:
                        devices[pk].record_presence(True, now)
        except Exception as exc:
            reason = "storage_error" if isinstance(exc, DatabaseError) else "internal_error"
            if len(items) == 1:
                return self._failed(items[0].device.device_id, items[0].topic, reason)
            log.warning(
                "telemetry batch failed, storing one by one", extra={"telemetry_messages": len(items)}, exc_info=True
            )
            return reason
        for pk, seq in stored.acks.items():
            self._publish(devices[pk].device_id, "ack", protocol.Ack(seq=seq))
        if stored.restamped:
            self._count_restamped(sum(stored.restamped.values()))
        now_s = now.timestamp()
        # Clamped at zero: a clock ahead of ours gives no negative lag.
        lags = [max(0.0, now_s - r.ts.timestamp()) for item in items for r in item.message.records]
        with self._progress:
            self.accepted["telemetry"] += len(items)
            self.records += len(lags)
            self.batches += 1
            self.lag_sum += sum(lags)
            # Per-bucket (not cumulative) counts; the exporter accumulates them.
            self.lag_buckets.update(_LAG_KEYS[bisect.bisect_left(LAG_BUCKETS, lag)] for lag in lags)
            self._progress.notify_all()
        return None

    def snapshot(self) -> dict[str, Any]:
        """This bridge's counters, copied at one instant (for the database report and the probe port's /metrics)."""
        with self._progress:
            return {
                "accepted": dict(self.accepted),
                "rejected": dict(self.rejected),
                "records": self.records,
                "batches": self.batches,
                "lag_buckets": dict(self.lag_buckets),
                "lag_sum": self.lag_sum,
                "restamped": self.restamped,
                "workers": {
                    name: {"progress_at": at, "restarts": self.worker_restarts[name]}
                    for name, at in sorted(self.worker_progress.items())
                },
            }

    def queued(self) -> int:
        """Messages received and not yet taken by a worker."""
        return sum(inbox.qsize() for inbox in self._inboxes)

    def export_stats(self) -> None:
        """Write this bridge's counters where the web process serves /metrics from."""
        self._exported_at = time.monotonic()
        counters = self.snapshot()
        try:
            BridgeStats.objects.update_or_create(
                bridge_id=self.client_id,
                defaults={"counters": counters, "updated_at": timezone.now()},
                create_defaults={"counters": counters, "updated_at": timezone.now(), "started_at": self._started_at},
            )
        except DatabaseError:
            log.warning("could not export bridge counters; next interval retries", exc_info=True)

    def _failed(self, device_id: str, topic: str, reason: str) -> str:
        if reason == "storage_error":
            # Nothing is lost: telemetry stays in the device's outbox until acknowledged.
            log.exception("storage failed", extra={"device": device_id, "topic": topic[:200]})
        else:
            # A bug of ours must cost one message, never the bridge; the
            # traceback is logged and the count exported so it gets fixed.
            log.exception("internal error", extra={"device": device_id, "topic": topic[:200]})
        self._count(self.rejected, reason)
        return reason

    def _reject(self, device_id: str, topic: str, exc: protocol.ProtocolError) -> str:
        log.warning(
            "message rejected",
            extra={"device": device_id, "topic": topic[:200], "reason": exc.reason, "detail": exc.detail},
        )
        self._count(self.rejected, exc.reason)
        return exc.reason

    def _count(self, counter: Counter[str], key: str) -> None:
        with self._progress:
            counter[key] += 1
            self._progress.notify_all()

    def _count_restamped(self, n: int) -> None:
        with self._progress:
            self.restamped += n

    # --- outgoing ------------------------------------------------------------

    def _publish(self, device_id: str, suffix: str, message: Any, *, retain: bool = False) -> mqtt.MQTTMessageInfo:
        return self.client.publish(protocol.topic(device_id, suffix), protocol.encode(message), qos=1, retain=retain)


def tune_gc() -> None:
    """Keep Python's cyclic garbage collector off the ingest path of a bridge process.

    Every batch allocates and frees hundreds of thousands of small containers
    (decoded messages, their records and data) that form no cycles and are
    freed by reference counting. With the default thresholds they still set
    off a collection every 700 allocations, and the older generations'
    collections walk every long-lived object of Django and the app registry:
    measured, that cost the bridge a third of its records/s. Freezing what
    start-up built moves it out of the collector's sight, and a larger first
    threshold lets a batch come and go between collections. Cycles are still
    collected, only less often.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


def run_forever(
    config: BridgeConfig, stop: threading.Event, on_start: Callable[[Bridge], object] | None = None
) -> Bridge:
    """The bridge process's main loop (``manage.py mqtt_bridge``); ``on_start`` sees the bridge once it runs."""
    tune_gc()
    bridge = Bridge(config)
    bridge.start()
    if on_start is not None:
        on_start(bridge)
    last_log = time.monotonic()
    try:
        while not stop.wait(_SUPERVISE_S):
            bridge.supervise()
            if time.monotonic() - last_log >= 60:
                last_log = time.monotonic()
                log.info(
                    "bridge counters", extra={"accepted": dict(bridge.accepted), "rejected": dict(bridge.rejected)}
                )
    finally:
        bridge.stop()
    return bridge


# How often the main loop checks that every worker thread still runs.
_SUPERVISE_S = 5.0
# A worker whose messages the database refused waits for it between these bounds (doubling), then
# applies them again, at most this many times once it answers.
_STORAGE_RETRY_S = (0.5, 5.0)
_STORAGE_RETRIES = 3


def _device_of(topic: str) -> str:
    parts = topic.split("/")
    return parts[2][:64] if len(parts) > 2 else "?"

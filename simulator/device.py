"""One simulated device's protocol state machine: no sockets, no clock of its own.

A driver (``simulator.live`` over MQTT, or a test in simulated time) tells a
``SimDevice`` what happened and when (``connected``, ``receive``) and asks it
what is due (``due(t)``); the device answers with what to publish and upload.
Times are seconds since the run's ``origin``; the timestamps on the wire are
``origin + t``. Nothing else goes in, so the same driver calls give the same
bytes: the determinism test replays a run and compares them.

What a device says is built from the kernel's protocol module and checked
by it, exactly as the agent's (``agent.runtime``, ``agent.updater``,
``agent.window``, ``agent.desired``):

* on connect: ``status`` online (retained), ``reported``, then every
  telemetry record not yet acknowledged (the outbox, with its ``floor``);
* every ``heartbeat_s``: a heartbeat record; every ``window_s``: a window
  summary (``simulator.behaviour``), both in ``telemetry`` batches with
  per-device sequence numbers, kept until an ``ack`` covers them;
* ``desired``: the signature checked with the device's keyring
  (``verify.verify_desired``) and the document with ``verify.check_desired``,
  a refusal reported as the event ``desired_rejected``; then the phases
  ``downloading`` (for as long as the site's shared uplink takes to carry
  the bundle), ``verifying``, ``validating``, ``active`` (or ``failed`` for a
  version a ``bad_model`` fault makes fail validation on this hardware), with
  the agent's ``model_swap`` and ``validation_failed`` events; a ``shadow``
  candidate is fetched the same way and reported as ``shadow_version``;
* unsure frames: at a site whose privacy is ``metadata`` (said by the
  desired document), a share is uploaded as metadata (``Upload``), as that
  site's agent does; elsewhere a simulated device has no pixels to send.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from agent.kernel import protocol, verify
from simulator import behaviour
from simulator.behaviour import DeviceSpec
from simulator.scenario import Scenario

# Verifying hashes the bundle (about 1.4 GB/s here) and checks its signature; validating runs the reference inputs.
VERIFY_BYTES_PER_S = 1.4e9
VALIDATE_S = 1.0
MAX_OUTBOX_RECORDS = 100_000
# Spreads the devices' windows over the interval (the golden ratio's fraction): no thundering herd on the minute.
_SPREAD = (math.sqrt(5) - 1) / 2


@dataclass(frozen=True)
class Publish:
    suffix: str
    payload: bytes
    retain: bool = False


@dataclass(frozen=True)
class Upload:
    """An escalated frame's metadata, for ``POST /api/v1/escalations/`` (no pixels: a metadata-only upload)."""

    metadata: dict[str, Any]


Out = Publish | Upload


class SiteLinks:
    """The sites' links, shared fairly by the downloads in flight on each (processor sharing).

    A download's end depends on the downloads that start before it ends, so it
    is asked again at the end first computed (``finish``): by then every
    download that started earlier is known, and the answer is exact. Runs that
    move through time in order (live, offline) get the same ends as
    ``behaviour.shared_link_finish`` over the whole run.
    """

    def __init__(self, scenario: Scenario) -> None:
        self.scenario = scenario
        self._downloads: dict[str, list[tuple[int, float, int]]] = {}
        self._done: dict[int, float] = {}
        self._keys = 0

    def begin(self, site: str, t: float, size_bytes: int) -> int:
        self._keys += 1
        downloads = self._downloads.setdefault(site, [])
        if downloads:
            # Forget what ended before every download still known started: it can no longer share anything.
            ends = self._ends(site)
            self._done.update((key, end) for key, end in ends.items() if end <= t)
            downloads[:] = [d for d in downloads if ends[d[0]] > t]
        downloads.append((self._keys, t, size_bytes))
        return self._keys

    def finish(self, site: str, key: int) -> float:
        done = self._done.get(key)  # asked again when a later download moved its end
        return done if done is not None else self._ends(site)[key]

    def _ends(self, site: str) -> dict[int, float]:
        downloads = self._downloads.get(site, [])
        if not downloads:
            return {}
        starts = [start for _, start, _ in downloads]
        kbps = behaviour.uplink_at(self.scenario, site, min(starts))
        ends = behaviour.shared_link_finish(starts, [size for _, _, size in downloads], kbps)
        return {key: end for (key, _, _), end in zip(downloads, ends, strict=True)}


@dataclass
class _Pending:
    at: float
    token: int
    action: Callable[[float], list[Out]]
    order: int = 0


@dataclass
class Counters:
    published: int = 0
    records: int = 0
    acked: int = 0
    rejected: int = 0
    desired_accepted: int = 0
    desired_refused: int = 0
    uploads: int = 0
    dropped: int = 0


class SimDevice:
    def __init__(
        self,
        scenario: Scenario,
        spec: DeviceSpec,
        *,
        device_id: str,
        keyring: verify.Keyring,
        origin: datetime,
        links: SiteLinks,
        resend_after_s: float | None = None,
    ) -> None:
        self.scenario = scenario
        # As the agent's outbox (``resend_after_s``): records published and not acknowledged for this long
        # are published again, so a batch the broker or a bridge lost while the link stayed up is not
        # kept back until the next reconnect. None: only a reconnect resends (the offline driver's runs).
        self.resend_after_s = resend_after_s
        self._acked_at = 0.0  # when an ack last covered something, or the backlog was last sent
        self.spec = spec
        self.device_id = device_id
        self.keyring = keyring
        self.origin = origin
        self.links = links
        self.model_name: str | None = scenario.model.name
        self.model_version: str | None = scenario.model.version
        self.shadow_version: str | None = None
        self.desired: protocol.Desired | None = None
        self.phase = "active"
        self.error: str | None = None
        self.connected = False
        self.counters = Counters()
        offset = (spec.index * _SPREAD) % 1.0
        self._next_window = (1.0 + offset) * scenario.window_s  # the first window is the longer
        self._window_start = 0.0
        self._window_number = 0
        self._next_heartbeat = offset * scenario.heartbeat_s
        self._next_report = self._next_heartbeat + scenario.report_s
        self._heartbeats = 0
        self._seq = 0
        self._acked = 0
        self._outbox: list[protocol.TelemetryRecord] = []
        self._unsent = 0  # how many records at the end of the outbox were never published
        self._pending: list[_Pending] = []
        self._token = 0
        self._orders = 0

    # --- time ------------------------------------------------------------------------

    def clock(self, t: float) -> datetime:
        return self.origin + timedelta(seconds=t)

    def next_due(self) -> float:
        times = [self._next_window, self._next_heartbeat, *(p.at for p in self._pending)]
        return min(times)

    def due(self, t: float) -> list[Out]:
        """Everything due up to ``t``, in time order (windows, heartbeats, install phases)."""
        out: list[Out] = []
        while True:
            step = self.next_due()
            if step > t:
                break
            pending = min(self._pending, key=lambda p: (p.at, p.order), default=None)
            if pending is not None and pending.at == step:
                self._pending.remove(pending)
                if pending.token == self._token:
                    out += pending.action(pending.at)
            elif self._next_heartbeat == step:
                self._heartbeat(step)
                self._next_heartbeat += self.scenario.heartbeat_s
                if step >= self._next_report:
                    self._next_report = step + self.scenario.report_s
                    if self.connected:
                        out.append(self._reported(step))
            else:
                out += self._window(step)
                self._next_window += self.scenario.window_s
        in_flight = len(self._outbox) - self._unsent
        if self.resend_after_s is not None and self.connected and in_flight:
            if t - self._acked_at >= self.resend_after_s:
                self._unsent, self._acked_at = len(self._outbox), t
        elif not in_flight:
            self._acked_at = t  # nothing waits for an ack: the wait starts with what goes out now
        out += self._flush()
        # Offline, what is due still happens (windows go to the outbox) but nothing goes out.
        return out if self.connected else []

    # --- the link ------------------------------------------------------------------------

    def connect(self, t: float) -> list[Out]:
        """The link came up: presence, what the device runs, then the telemetry backlog."""
        self.connected = True
        online = protocol.Status(state="online", ts=self.clock(t), agent_version=self.scenario.agent_version)
        out: list[Out] = [self._publish("status", online, retain=True), self._reported(t)]
        # Whatever was in flight on the old connection may be lost: send everything unacknowledged again.
        self._unsent, self._acked_at = len(self._outbox), t
        return out + self._flush()

    def disconnect(self) -> None:
        self.connected = False

    def receive(self, t: float, suffix: str, payload: bytes) -> list[Out]:
        """A message from the broker on one of the device's own topics."""
        if not payload:
            return []  # a cleared retained message
        try:
            message = protocol.decode(suffix, payload, received_at=self.clock(t))
        except protocol.ProtocolError:
            self.counters.rejected += 1
            return []
        if isinstance(message, protocol.Ack):
            if self._ack(message.seq):
                self._acked_at = t
            return []
        if isinstance(message, protocol.Desired):
            return self._offer(t, message)
        if isinstance(message, protocol.Command):
            if message.name == "ping":
                return self._event(t, "pong", command_id=message.id, agent_version=self.scenario.agent_version)
            if message.name == "flush":
                self._unsent = len(self._outbox)
                return self._flush()
        return []

    # --- telemetry -----------------------------------------------------------------------

    def _append(self, t: float, kind: Literal["heartbeat", "window"], data: dict[str, Any]) -> None:
        self._seq += 1
        self._outbox.append(protocol.TelemetryRecord(seq=self._seq, kind=kind, ts=self.clock(t), data=data))
        self._unsent += 1
        self.counters.records += 1
        if len(self._outbox) > MAX_OUTBOX_RECORDS:
            # The bounded outbox drops its oldest records; the batch's floor tells the cloud they will never come.
            del self._outbox[0]
            self._unsent = min(self._unsent, len(self._outbox))
            self.counters.dropped += 1

    def _heartbeat(self, t: float) -> None:
        self._heartbeats += 1
        beat = protocol.Heartbeat(
            agent_version=self.scenario.agent_version,
            uptime_s=float(round(t, 3)),
            cpu_percent=35.0,
            memory_percent=40.0,
            disk_percent=30.0,
            disk_free_bytes=20 * 1024**3,
            temperature_c=behaviour.temperature(self.scenario, self.spec, self._heartbeats),
            model_version=self.model_version,
            outbox_depth=len(self._outbox),
        )
        self._append(t, "heartbeat", beat.model_dump(mode="json", exclude_none=True))

    def _window(self, t: float) -> list[Out]:
        number = self._window_number
        self._window_number += 1
        figures = behaviour.measure(
            self.scenario,
            self.spec,
            number,
            self.model_version,
            shadow_version=self.shadow_version,
            window_s=t - self._window_start,
        )
        window = protocol.Window(
            start=self.clock(self._window_start),
            end=self.clock(t),
            model_name=self.model_name,
            model_version=self.model_version,
            frames=figures.frames,
            errors=figures.errors,
            escalations=figures.escalations,
            latency_ms=figures.latency_ms,
            confidence=figures.confidence,
            classes=figures.classes,
            shadow=None if figures.shadow is None else protocol.ShadowSummary.model_validate(figures.shadow),
        )
        self._window_start = t
        self._append(t, "window", window.model_dump(mode="json", exclude_none=True))
        out: list[Out] = []
        # Only a metadata-only site (its desired document says so) takes an upload without pixels;
        # a simulated device has no frame to send, so elsewhere its unsure frames stay counted in the window.
        privacy = self.desired.config.escalation_privacy if self.desired else None
        if privacy == "metadata":
            for n in range(behaviour.uploads(self.scenario, self.spec, number, figures.escalations)):
                self.counters.uploads += 1
                out.append(Upload(self._escalation(t, number, n)))
        return out if self.connected else []

    def _escalation(self, t: float, number: int, n: int) -> dict[str, Any]:
        threshold = self.scenario.model.escalation_threshold
        label = self.scenario.model.classes[0][0]
        return {
            "device_id": self.device_id,
            "ts": self.clock(t).isoformat(),
            "model_name": self.model_name,
            "model_version": self.model_version,
            "threshold": threshold,
            "frame": f"sim-{number}-{n}@{int(self.clock(t).timestamp() * 1000)}",
            "reason": "unsure",
            "sample_rate": 1.0,
            "result": {
                "label": label,
                "confidence": round(threshold / 2, 6),
                "latency_ms": 0.0,
                "model_name": self.model_name,
                "model_version": self.model_version,
                "frame_index": number,
                "ts": self.clock(t).timestamp(),
            },
        }

    def _flush(self) -> list[Out]:
        """The records never published yet, in batches, while connected."""
        if not self.connected or not self._unsent:
            return []
        fresh = self._outbox[len(self._outbox) - self._unsent :]
        self._unsent = 0
        floor = self._outbox[0].seq if self._outbox else None
        out: list[Out] = []
        for start in range(0, len(fresh), protocol.MAX_BATCH_RECORDS):
            batch = fresh[start : start + protocol.MAX_BATCH_RECORDS]
            out.append(self._publish("telemetry", protocol.Telemetry(records=batch, floor=floor)))
        return out

    def _ack(self, seq: int) -> int:
        """Drop what ``seq`` covers from the outbox; how many records that was."""
        kept = [r for r in self._outbox if r.seq > seq]
        removed = len(self._outbox) - len(kept)
        if removed:
            self.counters.acked += removed
            self._unsent = min(self._unsent, len(kept))
            self._outbox = kept
        self._acked = max(self._acked, seq)
        return removed

    @property
    def outbox_depth(self) -> int:
        return len(self._outbox)

    # --- desired state -------------------------------------------------------------------

    def _offer(self, t: float, desired: protocol.Desired) -> list[Out]:
        if desired == self.desired:
            return []  # the retained copy, delivered again on reconnect
        now = self.clock(t)
        try:
            verify.verify_desired(desired, self.keyring, now=now)
            verify.check_desired(desired, device_id=self.device_id, newest=self.desired, now=now)
        except verify.VerificationError as exc:
            self.counters.desired_refused += 1
            return self._event(
                t,
                "desired_rejected",
                generation=desired.generation,
                reason=exc.reason,
                detail=exc.detail[:300],
                current=self.desired.generation if self.desired else 0,
            )
        self.counters.desired_accepted += 1
        self.desired = desired
        self._token += 1
        out: list[Out] = []
        wanted = desired.model
        if wanted is not None and (wanted.name, wanted.version) != (self.model_name, self.model_version):
            out += self._install(t, wanted, rollback=desired.rollback_to is not None)
        else:
            out.append(self._reported(t))
        shadow = desired.shadow
        if shadow is None:
            if self.shadow_version is not None:
                self.shadow_version = None
                out.append(self._reported(t))
        elif shadow.version != self.shadow_version:
            key = self.links.begin(self.spec.site, t, shadow.size or self.scenario.model.bundle_bytes)
            version = shadow.version
            self._after_download(key, lambda at: self._later_list(at + VALIDATE_S, version))
        return out

    def _install(self, t: float, wanted: protocol.BundleRef, *, rollback: bool) -> list[Out]:
        size = wanted.size or self.scenario.model.bundle_bytes
        key = self.links.begin(self.spec.site, t, size)

        def downloaded(at: float) -> list[Out]:
            verified = at + size / VERIFY_BYTES_PER_S
            self._later(verified, lambda when: self._set_phase(when, "validating"))
            self._later(verified + VALIDATE_S, lambda when: self._activate(when, wanted, rollback))
            return self._set_phase(at, "verifying")

        self._after_download(key, downloaded)
        return [self._set_phase_now(t, "downloading")]

    def _after_download(self, key: int, then: Callable[[float], list[Out]]) -> None:
        """Call ``then`` when download ``key`` has ended on the site's shared link."""

        def check(at: float) -> list[Out]:
            end = self.links.finish(self.spec.site, key)
            if end > at + 1e-6:
                self._later(end, check)  # downloads that started meanwhile slowed it down
                return []
            return then(at)

        self._later(self.links.finish(self.spec.site, key), check)

    def _activate(self, t: float, wanted: protocol.BundleRef, rollback: bool) -> list[Out]:
        if behaviour.effect(self.scenario, wanted.version, self.spec.hardware).fails_validation:
            detail = f"reference_mismatch: {wanted.version} does not reproduce its reference outputs"
            self.phase, self.error = "failed", detail
            event = self._event(
                t, "validation_failed", version=wanted.version, reason="reference_mismatch", detail=detail
            )
            return [*event, self._reported(t)]
        previous = self.model_version
        self.model_name, self.model_version = wanted.name, wanted.version
        self.phase, self.error = ("rolled_back" if rollback else "active"), None
        event = self._event(
            t,
            "model_swap",
            name=wanted.name,
            version=wanted.version,
            sequence=wanted.sequence,
            previous=previous,
            phase=self.phase,
        )
        return [*event, self._reported(t)]

    def _later_list(self, at: float, version: str) -> list[Out]:
        self._later(at, lambda when: self._shadow_ready(when, version))
        return []

    def _shadow_ready(self, t: float, version: str) -> list[Out]:
        self.shadow_version = version
        return [self._reported(t)]

    def _set_phase(self, t: float, phase: str) -> list[Out]:
        return [self._set_phase_now(t, phase)]

    def _set_phase_now(self, t: float, phase: str) -> Out:
        self.phase, self.error = phase, None
        return self._reported(t)

    def _later(self, at: float, action: Callable[[float], list[Out]]) -> None:
        self._orders += 1
        self._pending.append(_Pending(at, self._token, action, self._orders))

    # --- messages ------------------------------------------------------------------------

    def _reported(self, t: float) -> Out:
        reported = protocol.Reported(
            generation=self.desired.generation if self.desired else 0,
            model_name=self.model_name,
            model_version=self.model_version,
            phase=self.phase,
            error=self.error,
            agent_version=self.scenario.agent_version,
            shadow_version=self.shadow_version,
            ts=self.clock(t),
        )
        return self._publish("reported", reported)

    def _event(self, t: float, kind: str, **data: Any) -> list[Out]:
        if not self.connected:
            return []  # events are informative and not kept (agent.runtime.Runtime.event)
        return [self._publish("events", protocol.Event(kind=kind, ts=self.clock(t), data=data))]

    def _publish(self, suffix: str, message: Any, *, retain: bool = False) -> Publish:
        self.counters.published += 1
        return Publish(suffix, protocol.encode(message), retain)


def publishes(out: list[Out]) -> list[Publish]:
    return [item for item in out if isinstance(item, Publish)]


@dataclass
class Trace:
    """What each device published, in order: the determinism test compares two of these."""

    by_device: dict[str, list[tuple[str, bytes]]] = field(default_factory=dict)

    def add(self, device: str, out: list[Out]) -> None:
        self.by_device.setdefault(device, []).extend((p.suffix, p.payload) for p in publishes(out))

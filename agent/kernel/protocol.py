"""MQTT protocol v1: topics and message types shared by the agent and the bridge.

This module is the single definition of the wire format. It imports nothing
from Django so that a device can use it as it is. ``decode()`` is the only way
a payload from the network becomes a message: it enforces the size limit, the
JSON shape, the protocol version, the type and the schema, and raises
``ProtocolError`` with a short machine-readable ``reason`` for anything else.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeVar

import orjson
from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    InstanceOf,
    PlainValidator,
    StrictBool,
    StrictFloat,
    StrictInt,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    model_validator,
)

from agent.kernel import histogram

PROTOCOL_VERSION: Literal[1] = 1
TOPIC_ROOT = "edgefleet/v1"
MAX_PAYLOAD_BYTES = 256 * 1024
MAX_BATCH_RECORDS = 1000
# orjson parses nesting up to 1,024 levels but encodes only up to 254, and a
# document is re-encoded when it is stored: refuse deep nesting at the door.
MAX_DEPTH = 64
# Device clocks are checked against the receiving time. A record may be old:
# the outbox keeps records through an outage and is bounded in bytes, not age
# (its default 64 MiB holds about five weeks of heartbeats and windows at the
# default intervals), so the past bound is well beyond that. A time ahead of the
# receiver by more than a few minutes is a wrong clock: trusting it would, for
# one, freeze a device's last heartbeat, which only a newer one replaces.
MAX_AGE = timedelta(days=90)
MAX_AHEAD = timedelta(minutes=5)
# A window summary covers at most an hour (agent config ``window_interval_s``).
MAX_WINDOW_SPAN = timedelta(days=1)
BIGINT_MAX = 2**63 - 1
# A count of one window (frames, errors, a histogram bin): far above any real
# window (an hour at a million frames a second is 3.6e9), and low enough that
# the sum of 2^31 windows still fits the bigint columns of the rollups.
MAX_COUNT = 2**32 - 1

# Topic suffixes by direction (DESIGN.md, "MQTT protocol v1").
DEVICE_TO_CLOUD = ("reported", "telemetry", "events", "status")
CLOUD_TO_DEVICE = ("desired", "commands", "ack")
SUFFIXES = DEVICE_TO_CLOUD + CLOUD_TO_DEVICE

UPDATE_PHASES = ("idle", "downloading", "verifying", "validating", "active", "failed", "rolled_back")

DeviceId = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]
ShortText = Annotated[str, Field(max_length=200)]
VersionText = Annotated[str, Field(max_length=64)]
LongText = Annotated[str, Field(max_length=4000)]


if TYPE_CHECKING:
    JSONObject = dict[str, Any]
else:
    # A JSON object as decoded (its keys are strings), checked and kept as it
    # is: validating it as dict[str, Any] would copy every record's data.
    JSONObject = InstanceOf[dict]
# Integers are JSON integers (never true, 5.0 or "5"): sequence numbers and
# sizes fit a PostgreSQL bigint, counts stay summable (MAX_COUNT).
Seq = Annotated[StrictInt, Field(ge=1, le=BIGINT_MAX)]
BigCount = Annotated[StrictInt, Field(ge=0, le=BIGINT_MAX)]
Count = Annotated[StrictInt, Field(ge=0, le=MAX_COUNT)]


class ProtocolError(ValueError):
    """A payload or topic that does not follow protocol v1."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def _in_window(value: datetime, anchor: datetime, before: timedelta, after: timedelta) -> bool:
    """Whether ``value`` lies within ``before`` before and ``after`` after ``anchor`` (a naive time is UTC)."""
    value, anchor = (t.replace(tzinfo=timezone.utc) if t.tzinfo is None else t for t in (value, anchor))
    # Year 1 at +14:00 is before the first instant datetime can hold in UTC,
    # year 9999 plus a day after the last: the arithmetic overflows, and such
    # a time is outside any window anyway.
    try:
        return anchor - before <= value <= anchor + after
    except OverflowError:
        return False


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    v: Literal[1] = PROTOCOL_VERSION


# --- device -> cloud --------------------------------------------------------


class Status(_Message):
    """Retained presence; the ``offline`` form is also the last will."""

    type: Literal["status"] = "status"
    state: Literal["online", "offline"]
    ts: datetime | None = None
    agent_version: VersionText | None = None


class Reported(_Message):
    """What the device runs now: the generation of ``desired`` it applied."""

    type: Literal["reported"] = "reported"
    generation: BigCount
    model_name: ShortText | None = None
    model_version: VersionText | None = None
    phase: Literal[UPDATE_PHASES] = "idle"  # type: ignore[valid-type]
    error: LongText | None = None
    agent_version: VersionText
    fallback: StrictBool = False
    shadow_version: VersionText | None = None
    """The candidate running in shadow (``Desired.shadow``), once verified and loaded."""
    desired_expired: StrictBool = False
    """The newest desired document the device holds has expired and none newer came (a freeze)."""
    ts: datetime = Field(default_factory=utcnow)


class Heartbeat(BaseModel):
    """The ``data`` of a telemetry record of kind ``heartbeat``."""

    model_config = ConfigDict(extra="allow", frozen=True)
    agent_version: VersionText
    uptime_s: StrictFloat = Field(ge=0)
    cpu_percent: StrictFloat = Field(ge=0, le=100 * 1024)
    memory_percent: StrictFloat = Field(ge=0, le=100)
    disk_percent: StrictFloat = Field(ge=0, le=100)
    disk_free_bytes: BigCount
    # Physically possible values, and finite sums in the rollups.
    temperature_c: StrictFloat | None = Field(default=None, ge=-273.15, le=1000)
    cpu_freq_mhz: StrictFloat | None = Field(default=None, ge=0, le=1e6)
    # Optional (the platform's rated peak); bounded like the clock it divides.
    cpu_freq_max_mhz: StrictFloat | None = Field(default=None, ge=0, le=1e6)
    model_version: VersionText | None = None
    outbox_depth: BigCount = 0


class ShadowSummary(BaseModel):
    """The ``shadow`` of a window: a candidate model run beside the one in service, on the same frames.

    ``frames`` is how many frames the candidate decided (as many as the frame
    budget for shadowing allowed), ``compared``/``agreed`` the agreement slots
    of ``agent.kernel.agreement`` over them; latency and confidence use the
    window's histograms.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    model_name: ShortText | None = None
    model_version: VersionText | None = None
    frames: Count = 0
    errors: Count = 0
    compared: Count = 0
    agreed: Count = 0
    latency_ms: dict[Annotated[str, Field(pattern=r"^[0-9]{1,3}$")], Count] = Field(
        default_factory=dict, max_length=histogram.MAX_INDEX + 1
    )
    confidence: Annotated[list[Count], Field(max_length=histogram.CONFIDENCE_BINS)] = Field(
        default_factory=lambda: [0] * histogram.CONFIDENCE_BINS
    )

    @model_validator(mode="after")
    def _consistent(self) -> ShadowSummary:
        if self.agreed > self.compared:
            raise ValueError("agreed exceeds compared")
        if any(int(k) > histogram.MAX_INDEX for k in self.latency_ms):
            raise ValueError(f"latency bucket above {histogram.MAX_INDEX}")
        if len(self.confidence) not in (0, histogram.CONFIDENCE_BINS):
            raise ValueError(f"confidence needs {histogram.CONFIDENCE_BINS} bins")
        return self


class Window(BaseModel):
    """The ``data`` of a telemetry record of kind ``window``: one summary of inference.

    Histograms use the fixed edges of ``agent.kernel.histogram`` so the control plane
    can merge windows across time and devices before reading percentiles.
    """

    model_config = ConfigDict(extra="allow", frozen=True)
    start: datetime
    end: datetime
    model_name: ShortText | None = None
    model_version: VersionText | None = None
    fallback: StrictBool = False
    frames: Count
    dropped_frames: Count = 0
    errors: Count = 0
    escalations: Count = 0
    # Latency bucket index (as a string, JSON keys are strings) -> count.
    latency_ms: dict[Annotated[str, Field(pattern=r"^[0-9]{1,3}$")], Count] = Field(
        default_factory=dict, max_length=histogram.MAX_INDEX + 1
    )
    confidence: Annotated[list[Count], Field(max_length=histogram.CONFIDENCE_BINS)] = Field(
        default_factory=lambda: [0] * histogram.CONFIDENCE_BINS
    )
    classes: dict[ShortText, Count] = Field(default_factory=dict, max_length=1000)
    shadow: ShadowSummary | None = None

    @model_validator(mode="after")
    def _consistent(self, info: ValidationInfo) -> Window:
        if not _in_window(self.end, self.start, timedelta(0), MAX_WINDOW_SPAN):
            raise ValueError(f"end is before start or more than {MAX_WINDOW_SPAN} after it")
        # The record's time (bounded at decode) anchors the window's, so no
        # window reaches into a year that a rollup bucket cannot hold.
        record_ts = info.context.get("ts") if isinstance(info.context, dict) else None
        if record_ts is not None and not _in_window(self.end, record_ts, MAX_WINDOW_SPAN, MAX_AHEAD):
            raise ValueError(f"end is more than {MAX_WINDOW_SPAN} before or {MAX_AHEAD} after the record's ts")
        if any(int(k) > histogram.MAX_INDEX for k in self.latency_ms):
            raise ValueError(f"latency bucket above {histogram.MAX_INDEX}")
        if len(self.confidence) not in (0, histogram.CONFIDENCE_BINS):
            raise ValueError(f"confidence needs {histogram.CONFIDENCE_BINS} bins")
        return self

    def latency(self) -> histogram.LatencyHistogram:
        return histogram.LatencyHistogram.from_wire(self.latency_ms)


class TelemetryRecord(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    seq: Seq
    kind: Literal["heartbeat", "window"]
    # A time without an offset is ambiguous between a device and the control plane.
    ts: AwareDatetime
    data: JSONObject


class Telemetry(_Message):
    """A batch of records; the cloud de-duplicates on (device, seq)."""

    type: Literal["telemetry"] = "telemetry"
    records: list[TelemetryRecord] = Field(min_length=1, max_length=MAX_BATCH_RECORDS)
    # Every seq below ``floor`` was acknowledged or dropped by the device's
    # bounded outbox and will never be sent. Without it the cloud could not
    # tell a dropped record from one still in flight through another bridge,
    # and its "highest contiguous" ack would stall at the first drop.
    floor: Seq | None = None


class Event(_Message):
    type: Literal["event"] = "event"
    kind: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[a-z0-9_.-]+$")]
    ts: datetime = Field(default_factory=utcnow)
    data: dict[str, Any] = Field(default_factory=dict)


# --- cloud -> device --------------------------------------------------------


class Signature(BaseModel):
    """A detached Ed25519 signature: ``manifest.sig`` and the ``signature`` of signed documents."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    alg: Literal["ed25519"] = "ed25519"
    key_id: Annotated[str, Field(pattern=r"^[0-9a-f]{16}$")]
    sig: Annotated[str, Field(max_length=200)]


Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


class BundleRef(BaseModel):
    """The ``model`` of a desired document: which bundle to run and how to check it before unpacking."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Annotated[str, Field(min_length=1, max_length=63)]
    version: Annotated[str, Field(min_length=1, max_length=64)]
    sequence: Seq
    target: Annotated[str, Field(max_length=32)] = "cpu-fp32"
    bundle_url: Annotated[str, Field(min_length=1, max_length=2000)]
    """Absolute, or a path on the control plane's ``server.url``."""
    sha256: Sha256 | None = None
    """The archive's digest; the download must hash to it."""
    size: Seq | None = None
    manifest_sha256: Sha256
    """The digest of the manifest inside: binds the document to one exact bundle."""


def _number_between(low: float, high: float) -> Callable[[object], int | float]:
    def check(value: object) -> int | float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError("must be a number")
        if not low <= value <= high:
            raise ValueError(f"must be between {low} and {high}")
        return value

    return check


# A number is kept as it came (15 stays 15, never 15.0): the signed bytes are the canonical
# JSON of the document as parsed, and must be the very bytes the control plane signed.
UnitNumber = Annotated[int | float, PlainValidator(_number_between(0, 1), json_schema_input_type=float)]
IntervalS = Annotated[int | float, PlainValidator(_number_between(0.1, 3600), json_schema_input_type=float)]
FramesPerS = Annotated[int | float, PlainValidator(_number_between(0.001, 1000), json_schema_input_type=float)]
BytesPerS = Annotated[int | float, PlainValidator(_number_between(1024, 1e9), json_schema_input_type=float)]


class RuntimeConfig(BaseModel):
    """The ``config`` of a desired document: what a device tunes without a new model."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    escalation_threshold: UnitNumber | None = None
    """Escalate frames below this confidence; absent: the model manifest's ``escalate_below``."""
    telemetry_interval_s: IntervalS | None = None
    """How often the pipeline's window summary becomes a ``window`` record; absent: the agent's config."""
    escalation_privacy: Literal["full", "crop", "metadata"] | None = None
    """The site's privacy for escalated frames: the whole frame, a crop around the detection, or no pixels."""
    escalation_max_frames_per_s: FramesPerS | None = None
    """This device's escalation budget in frames; absent: the agent's config."""
    escalation_bandwidth_bytes_per_s: BytesPerS | None = None
    """This device's escalation budget in upload bytes; absent: the agent's config."""


class Desired(_Message):
    """The desired state (device shadow), signed by the control plane (``agent.kernel.verify``).

    The signed bytes bind the document to one device (``device_id``; ``site``
    says where it was when issued) and to a validity period (``issued_at`` to
    ``expires``): a document for another device, an expired one or one older
    than the newest a device verified is refused (``verify.check_desired``).
    Going back to an older version is allowed only by ``rollback_to`` naming it.
    """

    type: Literal["desired"] = "desired"
    device_id: DeviceId
    site: Annotated[str, Field(max_length=63)] = ""
    generation: BigCount
    model: BundleRef | None = None
    rollback_to: VersionText | None = None
    """The older version ``model`` names, when this document is an explicit rollback to it."""
    shadow: BundleRef | None = None
    """A candidate the device runs beside ``model`` on the same frames, without acting on it."""
    config: RuntimeConfig = Field(default_factory=RuntimeConfig)
    issued_at: AwareDatetime = Field(default_factory=utcnow)
    expires: AwareDatetime
    signature: Signature | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Desired:
        if self.expires <= self.issued_at:
            raise ValueError("expires must be after issued_at")
        if self.rollback_to is not None and (self.model is None or self.model.version != self.rollback_to):
            raise ValueError("rollback_to must name the version of the document's model")
        return self


class Command(_Message):
    type: Literal["command"] = "command"
    id: ShortText
    name: Literal["ping", "flush", "snapshot", "escalation_result"]
    args: dict[str, Any] = Field(default_factory=dict)


class EscalationAnswer(BaseModel):
    """The cloud's answer to one escalated frame: the ``args`` of an ``escalation_result`` command."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    frame: ShortText
    """The frame id the device sent with it."""
    escalation: BigCount
    """The control plane's id of the escalation."""
    label: ShortText
    confidence: UnitNumber
    model_name: ShortText
    model_version: VersionText
    edge_label: ShortText | None = None
    answered_at: AwareDatetime


class Ack(_Message):
    """The highest contiguous telemetry sequence the control plane has stored."""

    type: Literal["ack"] = "ack"
    seq: BigCount


Message = Status | Reported | Telemetry | Event | Desired | Command | Ack


# --- over HTTPS -------------------------------------------------------------


class TrustStoreEntry(BaseModel):
    """One public signing key a device trusts (``agent.kernel.verify.TrustedKey`` checks and uses it)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    key_id: Annotated[str, Field(pattern=r"^[0-9a-f]{16}$")]
    algorithm: Literal["ed25519"] = "ed25519"
    public_key: Annotated[str, Field(max_length=200)]
    """Raw 32-byte Ed25519 public key, base64."""
    created_at: datetime | None = None
    retired_at: datetime | None = None
    """Signatures by this key are refused from this instant on."""


class EnrollmentAnswer(BaseModel):
    """What ``POST /api/v1/enroll`` answers: the device's identity, its broker and the keys it trusts.

    Unknown fields are ignored: a newer control plane may say more to an older agent.
    """

    model_config = ConfigDict(extra="ignore", frozen=True)

    device_id: DeviceId
    secret: Annotated[str, Field(min_length=1, max_length=200)]
    site: Annotated[str, Field(max_length=63)]
    broker_url: Annotated[str, Field(min_length=1, max_length=2000)]
    trust_store: list[TrustStoreEntry] = Field(max_length=100)
    heartbeat_interval_s: int = Field(ge=1, le=3600)


# Which message type each topic suffix carries.
TYPE_FOR_SUFFIX: dict[str, type[_Message]] = {
    "status": Status,
    "reported": Reported,
    "telemetry": Telemetry,
    "events": Event,
    "desired": Desired,
    "commands": Command,
    "ack": Ack,
}
_KNOWN_TYPES = {cls.model_fields["type"].default for cls in TYPE_FOR_SUFFIX.values()}
_HEARTBEAT = TypeAdapter(Heartbeat)
_WINDOW = TypeAdapter(Window)


def topic(device_id: str, suffix: str) -> str:
    if suffix not in SUFFIXES:
        raise ValueError(f"unknown topic suffix {suffix!r}")
    return f"{TOPIC_ROOT}/{device_id}/{suffix}"


def parse_topic(value: str) -> tuple[str, str]:
    """Split ``edgefleet/v1/{device_id}/{suffix}`` into its device id and suffix."""
    parts = value.split("/")
    if len(parts) != 4 or "/".join(parts[:2]) != TOPIC_ROOT:
        raise ProtocolError("bad_topic", value[:200])
    device_id, suffix = parts[2], parts[3]
    if suffix not in SUFFIXES or not device_id or len(device_id) > 64:
        raise ProtocolError("bad_topic", value[:200])
    return device_id, suffix


def encode(message: _Message) -> bytes:
    return message.model_dump_json(exclude_none=True).encode("utf-8")


def _too_deep(document: dict[str, Any], limit: int) -> bool:
    """Whether a parsed document nests objects and arrays deeper than ``limit`` levels (itself is level 1)."""
    # Level by level with exact type checks (orjson makes only dict and list):
    # about four times faster than a stack of (node, depth) pairs, which
    # mattered on the bridge's hot path (0.4 ms for a batch of 200 records).
    level: list[Any] = [document]
    for _ in range(limit):
        deeper: list[Any] = []
        for node in level:
            for child in node.values() if type(node) is dict else node:
                if type(child) is dict or type(child) is list:
                    deeper.append(child)
        if not deeper:
            return False
        level = deeper
    return True


def decode(
    suffix: str,
    payload: bytes | bytearray,
    *,
    max_bytes: int = MAX_PAYLOAD_BYTES,
    received_at: datetime | None = None,
    max_age: timedelta = MAX_AGE,
    max_ahead: timedelta = MAX_AHEAD,
) -> Message:
    """Validate a payload received on ``suffix`` and return its message.

    Times a device's clock set (on the device-to-cloud topics) must lie within
    ``max_age`` before and ``max_ahead`` after ``received_at`` (default: now).

    Raises ProtocolError with reason one of: too_large, not_json, not_object,
    bad_version, unknown_type, wrong_topic, schema, clock_skew.
    """
    if len(payload) > max_bytes:
        raise ProtocolError("too_large", f"{len(payload)} bytes > {max_bytes}")
    try:
        # orjson: strict RFC 8259 (no NaN or Infinity, which no database JSON
        # column takes; valid UTF-8 only; nesting limited), and several times
        # faster than the standard library on the bridge's hot path.
        document = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError("not_json", str(exc)[:200]) from None
    if not isinstance(document, dict):
        raise ProtocolError("not_object", type(document).__name__)
    # Legal JSON, but no database text column can hold a NUL character.
    if b"\\u0000" in payload:
        raise ProtocolError("schema", "strings may not contain NUL characters")
    if _too_deep(document, MAX_DEPTH):
        raise ProtocolError("schema", f"nested deeper than {MAX_DEPTH} levels")
    version = document.get("v")
    # true == 1 and 1.0 == 1 in Python; the version is the JSON integer 1.
    if type(version) is not int or version != PROTOCOL_VERSION:
        raise ProtocolError("bad_version", repr(version)[:50])
    kind = document.get("type")
    if not isinstance(kind, str) or kind not in _KNOWN_TYPES:
        raise ProtocolError("unknown_type", repr(kind)[:50])
    expected = TYPE_FOR_SUFFIX.get(suffix)
    if expected is None or expected.model_fields["type"].default != kind:
        raise ProtocolError("wrong_topic", f"type {kind!r} on {suffix!r}")
    try:
        message: Message = expected.model_validate(document)  # type: ignore[assignment]
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ProtocolError("schema", f"{where}: {first['msg']}"[:300]) from None
    _check_clock(message, received_at or utcnow(), max_age, max_ahead)
    return message


def _check_clock(message: Message, received_at: datetime, max_age: timedelta, max_ahead: timedelta) -> None:
    """Refuse a message a device's clock dated outside the window around the receiving time.

    A wrong clock is the device's state, not a malformed message, so it has a
    reason of its own (``clock_skew``). A ``desired`` document is not checked:
    it is signed, and whether it has expired is the device's to judge.
    """
    if isinstance(message, Telemetry):
        times = [r.ts for r in message.records]
    elif isinstance(message, (Status, Reported, Event)) and message.ts is not None:
        times = [message.ts]
    else:
        return
    # Checked after validation, once per message, not as a field validator:
    # that doubled the cost of decoding a large batch.
    low, high = received_at - max_age, received_at + max_ahead
    for index, ts in enumerate(times):
        try:
            inside = low <= (ts if ts.tzinfo is not None else ts.replace(tzinfo=timezone.utc)) <= high
        except OverflowError:
            # Year 1 at +14:00 is before the first instant datetime holds in UTC.
            inside = False
        if not inside:
            where = f"records.{index}.ts" if isinstance(message, Telemetry) else "ts"
            age, ahead = int(max_age.total_seconds()), int(max_ahead.total_seconds())
            raise ProtocolError(
                "clock_skew",
                f"{where}: {ts.isoformat()} is more than {age} s before or {ahead} s after "
                f"the receiving time {received_at.isoformat(timespec='seconds')}",
            )


def heartbeat_of(record: TelemetryRecord) -> Heartbeat:
    """Validate a heartbeat record's data (raises ProtocolError)."""
    return _data_of(_HEARTBEAT, "heartbeat", record)


def window_of(record: TelemetryRecord) -> Window:
    """Validate a window record's data (raises ProtocolError)."""
    return _data_of(_WINDOW, "window", record)


_T = TypeVar("_T")


def _data_of(adapter: TypeAdapter[_T], kind: str, record: TelemetryRecord) -> _T:
    try:
        return adapter.validate_python(record.data, context={"ts": record.ts})
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ProtocolError("schema", f"{kind}.{'.'.join(map(str, first['loc']))}: {first['msg']}"[:300]) from None


OFFLINE_WILL = encode(Status(state="offline"))

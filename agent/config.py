"""The agent's configuration: one TOML file, validated into typed settings.

The file is written by ``edgefleet-agent enroll`` and holds the device's
secret, so it is written atomically with 0600 permissions. Every key can be
overridden from the environment as ``EDGEFLEET_AGENT_<SECTION>_<KEY>`` (for
example ``EDGEFLEET_AGENT_MQTT_KEEPALIVE=15``); an override is validated like
the file and its errors name the variable. Errors always name the key, e.g.
``agent.toml: mqtt.keepalive: must be >= 5``.

Every part of the run time (inference, capture, updater, actions, escalation)
has its section model here, as one more field of ``AgentConfig``, and imports
it from here: reading the config needs only the base install (pydantic,
orjson), never OpenCV, numpy, onnxruntime or paho.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from agent.kernel.logs import LogFormat

if TYPE_CHECKING:
    # Only a type: importing the decoder at run time would pull numpy into every config read.
    from agent.kernel.decode import Result

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 devices
    import tomli as tomllib

ENV_PREFIX = "EDGEFLEET_AGENT_"
# Variables under the prefix that are not config keys.
ENV_RESERVED = frozenset({"EDGEFLEET_AGENT_CONFIG"})
DEFAULT_CONFIG_PATH = Path("/etc/edgefleet/agent.toml")


class ConfigError(ValueError):
    """A config file or override that cannot be used; the message names the key."""


class _Section(BaseModel):
    # Unknown keys are refused: a typo must not silently fall back to a default.
    model_config = ConfigDict(extra="forbid", frozen=True)


def http_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http:// or https:// URL")
    return value.rstrip("/")


class ServerSettings(_Section):
    url: str
    timeout_s: float = Field(default=15.0, gt=0, le=300)

    _check_url = field_validator("url")(http_url)


class DeviceSettings(_Section):
    id: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]
    secret: Annotated[str, Field(min_length=1, max_length=200, repr=False)]
    name: Annotated[str, Field(max_length=100)] = ""
    site: Annotated[str, Field(max_length=63)] = ""
    hardware_profile: Annotated[str, Field(max_length=64)] = ""


class MqttSettings(_Section):
    url: str
    keepalive: int = Field(default=30, ge=5, le=3600)
    ca_file: Path | None = None
    reconnect_min_s: int = Field(default=1, ge=1, le=300)
    reconnect_max_s: int = Field(default=60, ge=1, le=3600)

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            raise ValueError("must be an mqtt:// or mqtts:// URL")
        return value

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or "127.0.0.1"

    @property
    def port(self) -> int:
        parts = urlsplit(self.url)
        return parts.port or (8883 if parts.scheme == "mqtts" else 1883)

    @property
    def tls(self) -> bool:
        return urlsplit(self.url).scheme == "mqtts"


class AgentSettings(_Section):
    data_dir: Path
    heartbeat_interval_s: float = Field(default=30.0, ge=1, le=3600)
    report_interval_s: float = Field(default=300.0, ge=1, le=86400)
    """``reported`` is published on every change and again this often: a report the control plane never
    stored (a bridge killed after the broker took it, a broker restarted before it saved) is repaired."""


class LoggingSettings(_Section):
    """The ``[logging]`` section: one line per event on stderr (``agent.kernel.logs``, as the control plane)."""

    level: Literal["debug", "info", "warning", "error"] = "info"
    format: LogFormat = "logfmt"
    """``logfmt`` (key=value) or ``json`` (one object per line)."""


class OutboxSettings(_Section):
    max_bytes: int = Field(default=64 * 1024 * 1024, ge=64 * 1024)
    commit_interval_ms: int = Field(default=50, ge=1, le=10_000)
    commit_records: int = Field(default=100, ge=1, le=100_000)
    # Unacknowledged records on the wire at once; bounds what a lost
    # connection makes us resend and what the bridge must absorb.
    max_in_flight: int = Field(default=5000, ge=1)
    resend_after_s: float = Field(default=30.0, gt=0)
    # Share of each batch kept for the newest records while a backlog
    # drains, so live telemetry is never stuck behind an outage's worth.
    live_share: float = Field(default=0.1, ge=0, le=1)


class UpdaterSettings(_Section):
    """The ``[updater]`` section: how model bundles are fetched and when the fallback model takes over."""

    max_bundle_bytes: int = Field(default=512 * 1024 * 1024, ge=1024)
    """A download announcing more than this is refused before its first byte."""
    download_timeout_s: float = Field(default=30.0, gt=0, le=600)
    retry_after_s: float = Field(default=30.0, gt=0, le=3600)
    """A failed download (network, server) is tried again after this long."""
    crash_threshold: int = Field(default=20, ge=1, le=100_000)
    """Frames in a row the active model may fail on before the fallback model takes over."""


class VisionSettings(_Section):
    """The ``[vision]`` section: inference in ``run`` and its window telemetry."""

    enabled: bool = True
    window_interval_s: float = Field(default=60.0, ge=0.1, le=3600)
    """How often the pipeline's window summary becomes a ``window`` telemetry record."""


class CaptureSettings(_Section):
    """The ``[capture]`` section of the agent config."""

    source: Annotated[str, Field(min_length=1, max_length=2000)]
    """A camera index (``0``), a stream URL (``rtsp://...``), a video file or an image folder."""
    max_fps: float | None = Field(default=None, gt=0, le=1000)
    every_nth: int = Field(default=1, ge=1, le=10_000)
    loop: bool = False
    """Image folders and video files start over at their end (a demo feeds a folder forever)."""
    queue_size: int = Field(default=2, ge=1, le=1000)


class InferenceSettings(_Section):
    """The ``[inference]`` section of the agent config."""

    providers: list[Literal["tensorrt", "cuda", "openvino", "cpu"]] = ["cpu"]
    """Execution providers the device may use; the CPU is always used last, allowed or not."""
    intra_op_threads: int = Field(default=0, ge=0, le=256)
    """Threads for one operator; 0 lets onnxruntime use every core."""
    inter_op_threads: int = Field(default=1, ge=0, le=256)
    shadow_budget: float = Field(default=0.25, gt=0, le=4)
    """A candidate in shadow may take this share of the serving model's time; frames over it go unshadowed."""


class Rule(_Section):
    """Which results fire an action: any of ``classes`` (all when empty) at ``min_confidence`` or more."""

    classes: list[Annotated[str, Field(min_length=1, max_length=100)]] = Field(default_factory=list)
    min_confidence: float = Field(default=0.8, ge=0, le=1)

    def matches(self, result: Result) -> bool:
        wanted = set(self.classes)
        if result.detections:
            return any(d.score >= self.min_confidence and (not wanted or d.label in wanted) for d in result.detections)
        return (
            result.label is not None
            and result.confidence >= self.min_confidence
            and (not wanted or result.label in wanted)
        )


class CommandActionSettings(_Section):
    kind: Literal["command"] = "command"
    name: Annotated[str, Field(min_length=1, max_length=64)] = "command"
    when: Rule = Rule()
    argv: list[Annotated[str, Field(min_length=1)]] = Field(min_length=1)
    """Run as is, without a shell; ``{label}`` and ``{confidence}`` in an argument are filled in,
    and the result's JSON arrives on standard input."""
    timeout_s: float = Field(default=5.0, gt=0, le=300)


class WebhookActionSettings(_Section):
    kind: Literal["webhook"] = "webhook"
    name: Annotated[str, Field(min_length=1, max_length=64)] = "webhook"
    when: Rule = Rule()
    url: str
    timeout_s: float = Field(default=2.0, gt=0, le=60)
    headers: dict[str, str] = Field(default_factory=dict)

    @field_validator("url")
    @classmethod
    def _http(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL")
        return value


class MqttActionSettings(_Section):
    kind: Literal["mqtt"] = "mqtt"
    name: Annotated[str, Field(min_length=1, max_length=64)] = "mqtt"
    when: Rule = Rule()
    host: Annotated[str, Field(min_length=1, max_length=253)]
    port: int = Field(default=1883, ge=1, le=65535)
    topic: Annotated[str, Field(min_length=1, max_length=1000)]
    qos: Literal[0, 1] = 1
    username: str | None = None
    password: Annotated[str | None, Field(repr=False)] = None
    timeout_s: float = Field(default=2.0, gt=0, le=60)

    @field_validator("topic")
    @classmethod
    def _publishable(cls, value: str) -> str:
        if "+" in value or "#" in value:
            raise ValueError("a publish topic may not contain wildcards")
        return value


ActionSettings = Annotated[
    CommandActionSettings | WebhookActionSettings | MqttActionSettings, Field(discriminator="kind")
]


class ActionsSettings(_Section):
    """The ``[actions]`` section of the agent config."""

    queue_size: int = Field(default=256, ge=1, le=100_000)
    max_attempts: int = Field(default=5, ge=1, le=100)
    backoff_s: float = Field(default=0.5, gt=0, le=60)
    backoff_max_s: float = Field(default=30.0, gt=0, le=3600)
    rules: list[ActionSettings] = Field(default_factory=list, max_length=100)


class EscalationSettings(_Section):
    """The ``[escalation]`` section of the agent config."""

    enabled: bool = True
    threshold: float | None = Field(default=None, ge=0, le=1)
    """Escalate below this confidence; None uses the model manifest's ``escalate_below``."""
    max_frames_per_s: float = Field(default=1.0, gt=0, le=1000)
    burst: int = Field(default=5, ge=1, le=10_000)
    bandwidth_bytes_per_s: int = Field(default=256 * 1024, ge=1024)
    queue_max_bytes: int = Field(default=64 * 1024 * 1024, ge=64 * 1024)
    jpeg_quality: int = Field(default=85, ge=10, le=100)
    max_side: int | None = Field(default=1280, ge=32, le=8192)
    """Frames larger than this on their longer side are shrunk before encoding."""
    timeout_s: float = Field(default=15.0, gt=0, le=300)
    backoff_s: float = Field(default=1.0, gt=0, le=600)
    backoff_max_s: float = Field(default=300.0, gt=0, le=3600)
    handoff_size: int = Field(default=8, ge=1, le=1000)
    privacy: Literal["full", "crop", "metadata"] = "metadata"
    """What an escalation may carry until the desired state says: the frame, a crop around the detection
    (a classifier's frame then goes without pixels), or no pixels. No pixels by default: none leave a
    device before it knows its site's policy, which every signed desired document carries and which wins."""
    fallback_share: float = Field(default=0.01, ge=0, le=1)
    """The share of confident frames escalated too, so the cloud path is always in use and measured."""


class AgentConfig(_Section):
    server: ServerSettings
    device: DeviceSettings
    mqtt: MqttSettings
    agent: AgentSettings
    outbox: OutboxSettings = OutboxSettings()
    updater: UpdaterSettings = UpdaterSettings()
    vision: VisionSettings = VisionSettings()
    capture: CaptureSettings | None = None
    """Without a ``[capture]`` source the agent updates models but runs no inference."""
    inference: InferenceSettings = InferenceSettings()
    actions: ActionsSettings = ActionsSettings()
    escalation: EscalationSettings = EscalationSettings()
    logging: LoggingSettings = LoggingSettings()

    @model_validator(mode="before")
    @classmethod
    def _log_keys_moved(cls, document: Any) -> Any:
        # ``agent.log_level`` and ``agent.log_format`` (``text`` then) became ``[logging]``: the
        # files devices were given before still load, and say the same.
        agent = document.get("agent") if isinstance(document, dict) else None
        if not isinstance(agent, dict) or not {"log_level", "log_format"} & set(agent):
            return document
        rest = {k: v for k, v in agent.items() if k not in ("log_level", "log_format")}
        moved = {new: agent[old] for old, new in (("log_level", "level"), ("log_format", "format")) if old in agent}
        if moved.get("format") == "text":
            moved["format"] = "logfmt"
        section = document.get("logging")
        if section is not None and not isinstance(section, dict):
            return document
        return {**document, "agent": rest, "logging": {**moved, **(section or {})}}

    @property
    def data_dir(self) -> Path:
        return self.agent.data_dir

    @property
    def outbox_path(self) -> Path:
        return self.agent.data_dir / "outbox.db"

    @property
    def trust_store_path(self) -> Path:
        return self.agent.data_dir / "trust.json"

    @property
    def desired_path(self) -> Path:
        return self.agent.data_dir / "desired.json"

    @property
    def models_dir(self) -> Path:
        return self.agent.data_dir / "models"


SECTIONS: dict[str, type[_Section]] = {
    name: field.annotation  # type: ignore[misc]
    for name, field in AgentConfig.model_fields.items()
}


def _describe(error: Mapping[str, Any]) -> str:
    """A short human message for one pydantic error."""
    kind, ctx = error["type"], error.get("ctx") or {}
    bounds = {
        "greater_than_equal": ("ge", ">="),
        "greater_than": ("gt", ">"),
        "less_than_equal": ("le", "<="),
        "less_than": ("lt", "<"),
    }
    if kind in bounds:
        key, sign = bounds[kind]
        return f"must be {sign} {ctx[key]}"
    messages = {
        "missing": "is required",
        "extra_forbidden": "unknown key",
        "int_parsing": "must be an integer",
        "int_type": "must be an integer",
        "float_parsing": "must be a number",
        "float_type": "must be a number",
        "string_type": "must be a string",
        "bool_parsing": "must be true or false",
        "literal_error": f"must be one of {ctx.get('expected', '')}",
        "string_too_long": f"must be at most {ctx.get('max_length')} characters",
        "string_too_short": f"must be at least {ctx.get('min_length')} characters",
        "string_pattern_mismatch": "contains characters that are not allowed",
        "model_type": "must be a table",
        "model_attributes_type": "must be a table",
    }
    if kind == "value_error":
        return str(ctx.get("error", error["msg"]))
    return messages.get(kind, str(error["msg"]))


def _env_overrides(environ: Mapping[str, str]) -> tuple[dict[str, dict[str, str]], dict[tuple[str, str], str]]:
    """Collect ``EDGEFLEET_AGENT_<SECTION>_<KEY>`` values, and which variable set each key."""
    values: dict[str, dict[str, str]] = {}
    origin: dict[tuple[str, str], str] = {}
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX) or name in ENV_RESERVED:
            continue
        rest = name[len(ENV_PREFIX) :].lower()
        section = next((s for s in SECTIONS if rest.startswith(s + "_")), None)
        if section is None:
            raise ConfigError(f"{name}: unknown section (expected one of {', '.join(SECTIONS)})")
        key = rest[len(section) + 1 :]
        values.setdefault(section, {})[key] = value
        origin[(section, key)] = name
    return values, origin


def parse(
    document: Mapping[str, Any], *, source: str = "agent.toml", environ: Mapping[str, str] | None = None
) -> AgentConfig:
    """Validate a parsed TOML document plus environment overrides."""
    merged: dict[str, Any] = {k: dict(v) if isinstance(v, Mapping) else v for k, v in document.items()}
    overrides, origin = _env_overrides(os.environ if environ is None else environ)
    for section, keys in overrides.items():
        table = merged.setdefault(section, {})
        if not isinstance(table, dict):
            raise ConfigError(f"{source}: {section}: must be a table")
        table.update(keys)
    try:
        return AgentConfig.model_validate(merged)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"])
        loc = tuple(str(part) for part in error["loc"][:2])
        variable = origin.get((loc[0], loc[1])) if len(loc) == 2 else None
        prefix = f"{source}: {where} (from {variable})" if variable else f"{source}: {where}"
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise ConfigError(f"{prefix}: {_describe(error)}{more}") from None


def load(path: Path, *, environ: Mapping[str, str] | None = None) -> AgentConfig:
    """Read and validate the config file; raises ConfigError naming the file and key."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file (run `edgefleet-agent enroll` first)") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        document = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    return parse(document, source=str(path), environ=environ)


def to_document(config: AgentConfig) -> dict[str, Any]:
    # Only what was set: a default written into the file would stay frozen
    # there when a later agent version improves it. TOML has no null either.
    return config.model_dump(mode="json", exclude_unset=True, exclude_none=True)


def atomic_write(path: Path, data: bytes, *, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data`` so a crash leaves the old file or the new one, never half.

    The temporary file is created with ``mode`` from the start, so the secret
    is never readable by others, not even for a moment.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    # The rename is durable only once the directory entry is on disk.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on a directory; the rename still happened
    finally:
        os.close(fd)


def write(path: Path, config: AgentConfig) -> None:
    """Write the config file atomically with 0600 permissions."""
    import tomli_w

    atomic_write(path, tomli_w.dumps(to_document(config)).encode("utf-8"), mode=0o600)

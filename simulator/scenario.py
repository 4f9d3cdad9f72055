"""Scenario files: sites, hardware profiles, the model, faults on a timeline, a duration and a seed.

A scenario is TOML (docs/simulator.md, "Scenarios"). ``load()`` reads a file
and ``parse()`` a document already read; both refuse anything unknown or out
of bounds with a ``ScenarioError`` naming the key at fault
(``sites[2].uplink_kbps: ...``), so a typo never silently becomes a default.
The bounds keep one scenario from asking for a fleet or a timeline no run
could finish. Pure: no I/O but the file read.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 devices
    import tomli as tomllib

MAX_DEVICES = 100_000
MAX_SITES = 10_000
MAX_DURATION_S = 30 * 86400
FAULT_KINDS = ("device_dies", "site_offline", "uplink", "bad_model")
DEFAULT_START = datetime(2026, 1, 5, 8, 0, tzinfo=timezone.utc)


class ScenarioError(ValueError):
    """A scenario that cannot be run; ``where`` is the key at fault."""

    def __init__(self, where: str, message: str) -> None:
        super().__init__(f"{where}: {message}" if where else message)
        self.where = where
        self.message = message


@dataclass(frozen=True)
class Spread:
    """A positive quantity: ``median`` and the log-normal ``spread`` (sigma) around it."""

    median: float
    spread: float


@dataclass(frozen=True)
class Hardware:
    name: str
    fps: float = 2.0
    latency_ms: Spread = Spread(20.0, 0.25)
    # Top-1 confidence is Beta-distributed with this mean; ``concentration`` (a + b) sets how tight.
    confidence_mean: float = 0.85
    confidence_concentration: float = 20.0
    temperature_c: float = 50.0
    temperature_spread_c: float = 3.0
    error_rate: float = 0.0


@dataclass(frozen=True)
class SiteGroup:
    """``count`` sites named ``name`` (one) or ``name-001``... (several), each with ``devices`` devices."""

    name: str
    count: int = 1
    devices: int = 10
    uplink_kbps: float = 10_000.0
    hardware: tuple[tuple[str, float], ...] = ()
    latency_budget_ms: int | None = None


@dataclass(frozen=True)
class Fault:
    kind: str
    at_s: float = 0.0
    for_s: float | None = None
    site: str | None = None
    devices: int = 1
    uplink_kbps: float | None = None
    # bad_model
    version: str | None = None
    hardware: str | None = None
    latency_factor: float = 1.0
    confidence_shift: float = 0.0
    wrong_share: float = 0.0
    error_rate: float = 0.0
    fails_validation: bool = False

    def active_at(self, t: float) -> bool:
        return self.at_s <= t and (self.for_s is None or t < self.at_s + self.for_s)


@dataclass(frozen=True)
class ModelSpec:
    name: str = "parts-classifier"
    version: str = "1.0.0"
    bundle_bytes: int = 5_000_000
    classes: tuple[tuple[str, float], ...] = (("ok", 0.9), ("scratch", 0.07), ("dent", 0.03))
    escalation_threshold: float = 0.5
    # Of the frames below the threshold, the share a device uploads (metadata) to the cloud.
    escalation_upload_share: float = 0.01


@dataclass(frozen=True)
class Scenario:
    seed: int
    duration_s: float
    hardware: dict[str, Hardware]
    sites: tuple[SiteGroup, ...]
    model: ModelSpec = ModelSpec()
    faults: tuple[Fault, ...] = ()
    name: str = "scenario"
    start: datetime = DEFAULT_START
    window_s: float = 60.0
    heartbeat_s: float = 60.0
    # ``reported`` again this often, unchanged, as the agent's ``agent.report_interval_s``.
    report_s: float = 300.0
    agent_version: str = "0.1.0"
    site_slugs: tuple[str, ...] = field(default=(), compare=False)

    @property
    def device_count(self) -> int:
        return sum(group.count * group.devices for group in self.sites)


# --- parsing -------------------------------------------------------------------------


def load(path: str | Path) -> Scenario:
    return parse(read(path))


def read(path: str | Path) -> dict[str, Any]:
    """A scenario file's TOML as read, not yet checked (to change a key before ``parse``)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ScenarioError("", f"cannot read {path}: {exc.strerror or exc}") from None
    return _toml(text)


def loads(text: str) -> Scenario:
    return parse(_toml(text))


def _toml(text: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError("", f"not valid TOML: {exc}") from None


def parse(document: Mapping[str, Any]) -> Scenario:
    """A scenario from its parsed TOML (or the JSON of the what-if API: the same keys)."""
    if not isinstance(document, Mapping):
        raise ScenarioError("", "a scenario is a table of keys")
    _only(
        document,
        "",
        {
            "name", "seed", "duration_s", "start", "window_s", "heartbeat_s", "report_s", "agent_version",
            "model", "hardware", "sites", "faults",
        },
    )  # fmt: skip
    hardware = _hardware(document.get("hardware"))
    sites = _sites(document.get("sites"), hardware)
    slugs = _slugs(sites)
    faults = tuple(_fault(f, f"faults[{i}]", hardware, slugs) for i, f in enumerate(_list(document, "faults")))
    scenario = Scenario(
        name=_text(document.get("name", "scenario"), "name"),
        seed=_int(document.get("seed", 0), "seed", 0, 2**63 - 1),
        duration_s=_number(document.get("duration_s", 3600), "duration_s", 1, MAX_DURATION_S),
        start=_start(document.get("start")),
        window_s=_number(document.get("window_s", 60), "window_s", 1, 3600),
        heartbeat_s=_number(document.get("heartbeat_s", 60), "heartbeat_s", 1, 3600),
        report_s=_number(document.get("report_s", 300), "report_s", 1, 86400),
        agent_version=_text(document.get("agent_version", "0.1.0"), "agent_version"),
        model=_model(document.get("model", {})),
        hardware=hardware,
        sites=sites,
        faults=faults,
        site_slugs=tuple(slugs),
    )
    if scenario.device_count > MAX_DEVICES:
        raise ScenarioError("sites", f"{scenario.device_count} devices; at most {MAX_DEVICES}")
    return scenario


def site_slugs(group: SiteGroup) -> list[str]:
    if group.count == 1:
        return [group.name]
    return [f"{group.name}-{i:03d}" for i in range(1, group.count + 1)]


def _slugs(sites: tuple[SiteGroup, ...]) -> list[str]:
    slugs: list[str] = []
    for index, group in enumerate(sites):
        for slug in site_slugs(group):
            if slug in slugs:
                raise ScenarioError(f"sites[{index}].name", f"site {slug!r} is named twice")
            slugs.append(slug)
    if len(slugs) > MAX_SITES:
        raise ScenarioError("sites", f"{len(slugs)} sites; at most {MAX_SITES}")
    return slugs


def _hardware(value: Any) -> dict[str, Hardware]:
    if value is None:
        return {"generic": Hardware("generic")}
    if not isinstance(value, Mapping) or not value:
        raise ScenarioError("hardware", "a table of hardware profiles, e.g. [hardware.jetson-orin]")
    out: dict[str, Hardware] = {}
    for name, spec in value.items():
        where = f"hardware.{name}"
        _slug(name, where)
        if not isinstance(spec, Mapping):
            raise ScenarioError(where, "a table")
        _only(spec, where, {"fps", "latency_ms", "confidence", "temperature_c", "error_rate"})
        latency = spec.get("latency_ms", {})
        confidence = spec.get("confidence", {})
        temperature = spec.get("temperature_c", {})
        for key, table in (("latency_ms", latency), ("confidence", confidence), ("temperature_c", temperature)):
            if not isinstance(table, Mapping):
                raise ScenarioError(f"{where}.{key}", "a table, e.g. { median = 20, spread = 0.25 }")
        _only(latency, f"{where}.latency_ms", {"median", "spread"})
        _only(confidence, f"{where}.confidence", {"mean", "concentration"})
        _only(temperature, f"{where}.temperature_c", {"mean", "spread"})
        out[name] = Hardware(
            name=name,
            fps=_number(spec.get("fps", 2.0), f"{where}.fps", 0.01, 240),
            latency_ms=Spread(
                _number(latency.get("median", 20.0), f"{where}.latency_ms.median", 0.01, 600_000),
                _number(latency.get("spread", 0.25), f"{where}.latency_ms.spread", 0, 3),
            ),
            confidence_mean=_number(confidence.get("mean", 0.85), f"{where}.confidence.mean", 0.01, 0.99),
            confidence_concentration=_number(
                confidence.get("concentration", 20.0), f"{where}.confidence.concentration", 0.5, 10_000
            ),
            temperature_c=_number(temperature.get("mean", 50.0), f"{where}.temperature_c.mean", -40, 150),
            temperature_spread_c=_number(temperature.get("spread", 3.0), f"{where}.temperature_c.spread", 0, 50),
            error_rate=_number(spec.get("error_rate", 0.0), f"{where}.error_rate", 0, 1),
        )
    return out


def _sites(value: Any, hardware: dict[str, Hardware]) -> tuple[SiteGroup, ...]:
    if not isinstance(value, list) or not value:
        raise ScenarioError("sites", "at least one [[sites]] table")
    out = []
    for index, spec in enumerate(value):
        where = f"sites[{index}]"
        if not isinstance(spec, Mapping):
            raise ScenarioError(where, "a table")
        _only(spec, where, {"name", "count", "devices", "uplink_kbps", "hardware", "latency_budget_ms"})
        if "name" not in spec:
            raise ScenarioError(f"{where}.name", "required")
        name = _slug(spec["name"], f"{where}.name")
        mix = spec.get("hardware")
        if mix is None:
            weights: tuple[tuple[str, float], ...] = ((next(iter(hardware)), 1.0),)
        else:
            if isinstance(mix, str):
                mix = {mix: 1}
            if not isinstance(mix, Mapping) or not mix:
                raise ScenarioError(f"{where}.hardware", "a profile name or a table of profile = weight")
            for profile in mix:
                if profile not in hardware:
                    known = ", ".join(sorted(hardware))
                    raise ScenarioError(f"{where}.hardware.{profile}", f"no such hardware profile (known: {known})")
            weights = tuple(
                (profile, _number(weight, f"{where}.hardware.{profile}", 0, 1e9)) for profile, weight in mix.items()
            )
            if sum(w for _, w in weights) <= 0:
                raise ScenarioError(f"{where}.hardware", "the weights add up to zero")
        budget = spec.get("latency_budget_ms")
        out.append(
            SiteGroup(
                name=name,
                count=_int(spec.get("count", 1), f"{where}.count", 1, MAX_SITES),
                devices=_int(spec.get("devices", 10), f"{where}.devices", 1, MAX_DEVICES),
                uplink_kbps=_number(spec.get("uplink_kbps", 10_000), f"{where}.uplink_kbps", 1, 10_000_000),
                hardware=weights,
                latency_budget_ms=None if budget is None else _int(budget, f"{where}.latency_budget_ms", 1, 600_000),
            )
        )
    return tuple(out)


def _model(value: Any) -> ModelSpec:
    if not isinstance(value, Mapping):
        raise ScenarioError("model", "a table")
    _only(
        value,
        "model",
        {"name", "version", "bundle_bytes", "classes", "escalation_threshold", "escalation_upload_share"},
    )
    default = ModelSpec()
    classes = value.get("classes")
    if classes is None:
        mix = default.classes
    else:
        if not isinstance(classes, Mapping) or not classes or len(classes) > 1000:
            raise ScenarioError("model.classes", "a table of 1 to 1000 class = share")
        mix = tuple(
            (_text(k, f"model.classes.{k}"), _number(v, f"model.classes.{k}", 0, 1e9)) for k, v in classes.items()
        )
        if sum(w for _, w in mix) <= 0:
            raise ScenarioError("model.classes", "the shares add up to zero")
    return ModelSpec(
        name=_slug(value.get("name", default.name), "model.name"),
        version=_text(value.get("version", default.version), "model.version"),
        bundle_bytes=_int(value.get("bundle_bytes", default.bundle_bytes), "model.bundle_bytes", 1, 2**40),
        classes=mix,
        escalation_threshold=_number(
            value.get("escalation_threshold", default.escalation_threshold), "model.escalation_threshold", 0, 1
        ),
        escalation_upload_share=_number(
            value.get("escalation_upload_share", default.escalation_upload_share), "model.escalation_upload_share", 0, 1
        ),
    )


_FAULT_KEYS: dict[str, set[str]] = {
    "device_dies": {"site", "devices"},
    "site_offline": {"site", "for_s"},
    "uplink": {"site", "uplink_kbps", "for_s"},
    "bad_model": {
        "version", "hardware", "latency_factor", "confidence_shift", "wrong_share", "error_rate", "fails_validation",
    },
}  # fmt: skip


def parse_fault(spec: Any, where: str, hardware: Mapping[str, Hardware], slugs: list[str]) -> Fault:
    """One fault table (also the ``--model-fault`` of a what-if run, as key=value pairs)."""
    return _fault(spec, where, hardware, slugs)


def _fault(spec: Any, where: str, hardware: Mapping[str, Hardware], slugs: list[str]) -> Fault:
    if not isinstance(spec, Mapping):
        raise ScenarioError(where, "a table")
    kind = spec.get("kind")
    if kind not in FAULT_KINDS:
        raise ScenarioError(f"{where}.kind", f"one of {', '.join(FAULT_KINDS)}")
    _only(spec, where, {"kind", "at_s"} | _FAULT_KEYS[kind])
    site = spec.get("site")
    if kind != "bad_model":
        if site is None:
            raise ScenarioError(f"{where}.site", "required")
        if site not in slugs:
            raise ScenarioError(f"{where}.site", f"no site {site!r} in this scenario")
    profile = spec.get("hardware")
    if profile is not None and profile not in hardware:
        raise ScenarioError(f"{where}.hardware", f"no such hardware profile (known: {', '.join(sorted(hardware))})")
    if kind == "bad_model" and "version" not in spec:
        raise ScenarioError(f"{where}.version", "required: the model version that misbehaves")
    if kind == "uplink" and "uplink_kbps" not in spec:
        raise ScenarioError(f"{where}.uplink_kbps", "required")
    for_s = spec.get("for_s")
    fails = spec.get("fails_validation", False)
    if not isinstance(fails, bool):
        raise ScenarioError(f"{where}.fails_validation", "true or false")
    return Fault(
        kind=kind,
        at_s=_number(spec.get("at_s", 0), f"{where}.at_s", 0, MAX_DURATION_S),
        for_s=None if for_s is None else _number(for_s, f"{where}.for_s", 1, MAX_DURATION_S),
        site=site,
        devices=_int(spec.get("devices", 1), f"{where}.devices", 1, MAX_DEVICES),
        uplink_kbps=None if kind != "uplink" else _number(spec["uplink_kbps"], f"{where}.uplink_kbps", 1, 10_000_000),
        version=None if kind != "bad_model" else _text(spec["version"], f"{where}.version"),
        hardware=profile,
        latency_factor=_number(spec.get("latency_factor", 1.0), f"{where}.latency_factor", 0.01, 1000),
        confidence_shift=_number(spec.get("confidence_shift", 0.0), f"{where}.confidence_shift", -1, 1),
        wrong_share=_number(spec.get("wrong_share", 0.0), f"{where}.wrong_share", 0, 1),
        error_rate=_number(spec.get("error_rate", 0.0), f"{where}.error_rate", 0, 1),
        fails_validation=fails,
    )


def parse_pairs(text: str) -> dict[str, Any]:
    """``version=2.0.0,hardware=rpi5,latency_factor=3`` as a table (numbers and booleans read as such)."""
    out: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ScenarioError("model-fault", f"{item!r}: expected key=value")
        value: Any = raw.strip()
        if value in ("true", "false"):
            value = value == "true"
        else:
            try:
                value = float(value) if any(c in value for c in ".eE") else int(value)
            except ValueError:
                pass
        out[key.strip()] = value
    return out


# --- checks --------------------------------------------------------------------------


def _only(table: Mapping[str, Any], where: str, allowed: set[str]) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        prefix = f"{where}." if where else ""
        raise ScenarioError(f"{prefix}{unknown[0]}", f"unknown key (known here: {', '.join(sorted(allowed))})")


def _list(document: Mapping[str, Any], key: str) -> list[Any]:
    value = document.get(key, [])
    if not isinstance(value, list):
        raise ScenarioError(key, f"a list of [[{key}]] tables")
    return value


def _number(value: Any, where: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise ScenarioError(where, "a number")
    if not low <= value <= high:
        raise ScenarioError(where, f"{value!r} is not within {low:g} to {high:g}")
    return float(value)


def _int(value: Any, where: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ScenarioError(where, "an integer")
    if not low <= value <= high:
        raise ScenarioError(where, f"{value} is not within {low} to {high}")
    return value


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= 64 or "\x00" in value:
        raise ScenarioError(where, "a text of 1 to 64 characters")
    return value


def _slug(value: Any, where: str) -> str:
    text = _text(value, where)
    if not all(c.isascii() and (c.isalnum() or c in "-_") for c in text) or len(text) > 50:
        raise ScenarioError(where, f"{text!r}: letters, digits, '-' and '_' only, at most 50")
    return text


def _start(value: Any) -> datetime:
    if value is None:
        return DEFAULT_START
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise ScenarioError("start", f"{value!r} is not an ISO 8601 time") from None
    else:
        raise ScenarioError("start", "a time, e.g. 2026-01-05T08:00:00Z")
    if moment.tzinfo is None:
        raise ScenarioError("start", "give the offset (Z for UTC)")
    return moment.astimezone(timezone.utc)

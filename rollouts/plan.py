"""Rollout plans, target specs and gate settings: their one definition and their strict validation.

Django-free. Every refusal is a ``ServiceError`` with code ``invalid_plan``
(or ``invalid_target``, ``invalid_gates``) naming the field at fault, so the
API answers it in its one error shape.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from core.errors import ServiceError

MAX_STAGES = 20
MAX_TARGET_ITEMS = 200
MAX_TEXT = 64
STAGE_KINDS = ("count", "percent", "sites")
# Upper bounds keep one plan from holding a stage for years or a fleet of a million devices in one count.
MAX_COUNT = 100_000
MAX_SITES = 1_000

# Defaults every stage is judged by; a template's gate defaults and a rollout's overrides replace them key by key.
GATE_DEFAULTS: dict[str, float | int | str] = {
    "activation_timeout_s": 1800,  # every stage device active (or failed) within this
    "soak_s": 600,  # telemetry gathered after the last device became active, before the gates judge
    "max_soak_extensions": 1,  # a marginal verdict extends the soak by soak_s this many times, then fails
    "max_failed_installs_pct": 0.0,  # share of the stage's devices whose install failed
    "max_silent_pct": 0.0,  # share of the stage's devices gone silent during the soak
    "max_error_rate_rise": 0.01,  # inference error rate, absolute rise against the devices' own baseline
    "max_p95_latency_regression": 0.2,  # p95 latency, relative rise (0.2 = 20 % slower)
    "max_confidence_drop": 0.05,  # mean confidence, absolute drop
    "max_escalation_rate_rise": 0.05,  # escalation rate, absolute rise
    "max_drift_psi": 0.25,  # confidence and class mix against the version's reference distribution from CI (PSI)
    "max_class_mix_psi": 0.25,  # class mix against the same devices' previous version (PSI): answers production
    "marginal_band": 0.25,  # up to threshold x (1 + band) over the threshold is marginal, past it fails
    "shadow_s": 600,  # a shadow stage runs the candidate beside the model this long before judging it
    "min_shadow_frames": 200,  # frames the candidate must have decided across the stage before it is judged
    "min_shadow_agreement": 0.95,  # share of agreement slots where candidate and model in service agree
    "max_concurrent_downloads_per_site": 0,  # devices of one site sent the version and not yet active or failed; 0: any
    "on_failure": "revert",  # revert the stage's devices to their previous version, or only pause
}
GATE_BOUNDS: dict[str, tuple[float, float]] = {
    "activation_timeout_s": (60, 7 * 86400),
    "soak_s": (0, 7 * 86400),
    "max_soak_extensions": (0, 5),
    "max_failed_installs_pct": (0, 100),
    "max_silent_pct": (0, 100),
    "max_error_rate_rise": (0, 1),
    "max_p95_latency_regression": (0, 10),
    "max_confidence_drop": (0, 1),
    "max_escalation_rate_rise": (0, 1),
    "max_drift_psi": (0, 10),
    "max_class_mix_psi": (0, 10),
    "marginal_band": (0, 1),
    "shadow_s": (0, 7 * 86400),
    "min_shadow_frames": (1, 10_000_000),
    "min_shadow_agreement": (0, 1),
    "max_concurrent_downloads_per_site": (0, 10_000),
}
INTEGER_GATES = (
    "activation_timeout_s",
    "soak_s",
    "max_soak_extensions",
    "shadow_s",
    "min_shadow_frames",
    "max_concurrent_downloads_per_site",
)
ON_FAILURE = ("revert", "pause")
TARGET_KEYS = ("sites", "labels", "hardware_profiles", "running_model")


@dataclass(frozen=True)
class Stage:
    kind: str
    value: int
    requires_approval: bool = False
    shadow: bool = False
    """Run the candidate in shadow on the stage's devices, and judge its agreement, before installing it."""


def _refuse(code: str, field: str, message: str) -> ServiceError:
    return ServiceError(code, message, 400, fields={field: [message]})


def _text(value: Any, *, blank: bool = False) -> bool:
    # PostgreSQL text cannot hold NUL: refused here, before a lookup or a write meets it.
    return isinstance(value, str) and (blank or len(value) > 0) and len(value) <= MAX_TEXT and "\x00" not in value


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_plan(plan: Any, field: str = "plan") -> list[Stage]:
    """The stages of a plan ``{"stages": [{"kind", "value", "requires_approval"?, "shadow"?}, ...]}``.

    ``count`` adds that many devices, ``percent`` brings the rollout to that
    share of its target (cumulative), ``sites`` adds the devices of that many
    more whole sites. The last stage must cover everyone: ``percent`` 100.
    """
    if not isinstance(plan, dict) or set(plan) - {"stages"}:
        raise _refuse("invalid_plan", field, 'A plan is an object {"stages": [...]} and nothing else.')
    stages = plan.get("stages")
    if not isinstance(stages, list) or not 1 <= len(stages) <= MAX_STAGES:
        raise _refuse("invalid_plan", f"{field}.stages", f"A plan has 1 to {MAX_STAGES} stages.")
    parsed = []
    last_percent = 0
    for i, stage in enumerate(stages):
        where = f"{field}.stages[{i}]"
        if not isinstance(stage, dict) or set(stage) - {"kind", "value", "requires_approval", "shadow"}:
            raise _refuse("invalid_plan", where, "A stage is an object with kind, value, requires_approval and shadow.")
        kind, value = stage.get("kind"), stage.get("value")
        value = value if _integer(value) else None
        approval = stage.get("requires_approval", False)
        if kind not in STAGE_KINDS:
            raise _refuse("invalid_plan", f"{where}.kind", f"kind is one of {', '.join(STAGE_KINDS)}.")
        if value is None:
            raise _refuse("invalid_plan", f"{where}.value", "value is an integer.")
        if kind == "percent" and not (1 <= value <= 100 and value > last_percent):
            raise _refuse(
                "invalid_plan", f"{where}.value", "A percent is 1 to 100 and above the percent of any earlier stage."
            )
        if kind == "count" and not 1 <= value <= MAX_COUNT:
            raise _refuse("invalid_plan", f"{where}.value", f"A count is 1 to {MAX_COUNT}.")
        if kind == "sites" and not 1 <= value <= MAX_SITES:
            raise _refuse("invalid_plan", f"{where}.value", f"A site wave is 1 to {MAX_SITES} sites.")
        if not isinstance(approval, bool):
            raise _refuse("invalid_plan", f"{where}.requires_approval", "requires_approval is true or false.")
        shadow = stage.get("shadow", False)
        if not isinstance(shadow, bool):
            raise _refuse("invalid_plan", f"{where}.shadow", "shadow is true or false.")
        if kind == "percent":
            last_percent = value
        parsed.append(Stage(kind, value, approval, shadow))
    if (parsed[-1].kind, parsed[-1].value) != ("percent", 100):
        raise _refuse("invalid_plan", f"{field}.stages", "The last stage must cover everyone: percent 100.")
    return parsed


def parse_gates(gates: Any, field: str = "gates") -> dict[str, Any]:
    """Gate overrides, checked key by key; unknown keys and values out of bounds are refused."""
    if gates is None:
        return {}
    if not isinstance(gates, dict):
        raise _refuse("invalid_gates", field, "gates is an object of gate settings.")
    out: dict[str, Any] = {}
    for key, value in gates.items():
        where = f"{field}.{key}"
        if key == "on_failure":
            if value not in ON_FAILURE:
                raise _refuse("invalid_gates", where, f"on_failure is one of {', '.join(ON_FAILURE)}.")
            out[key] = value
            continue
        if key not in GATE_BOUNDS:
            raise _refuse("invalid_gates", where, f"Unknown gate setting; known: {', '.join(sorted(GATE_DEFAULTS))}.")
        low, high = GATE_BOUNDS[key]
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if not number or (key in INTEGER_GATES and not _integer(value)) or not low <= value <= high:
            kind = "an integer" if key in INTEGER_GATES else "a number"
            raise _refuse("invalid_gates", where, f"{key} is {kind} from {low:g} to {high:g}.")
        out[key] = value
    return out


def effective_gates(*layers: dict[str, Any]) -> dict[str, Any]:
    """The defaults with each layer (template defaults, then rollout overrides) laid over them."""
    merged: dict[str, Any] = dict(GATE_DEFAULTS)
    for layer in layers:
        merged.update(layer or {})
    return merged


def parse_target(target: Any, field: str = "target") -> dict[str, Any]:
    """``{"sites": [slug...], "labels": {k: v}, "hardware_profiles": [...], "running_model": name}``.

    Every given key narrows the target (they are ANDed); at least one is required,
    so a rollout to the whole fleet is said out loud (``running_model``).
    """
    if not isinstance(target, dict) or not target or set(target) - set(TARGET_KEYS):
        raise _refuse("invalid_target", field, f"target is an object with at least one of {', '.join(TARGET_KEYS)}.")
    out: dict[str, Any] = {}
    for key in ("sites", "hardware_profiles"):
        if key in target:
            items = target[key]
            ok = isinstance(items, list) and 1 <= len(items) <= MAX_TARGET_ITEMS
            if not ok or not all(_text(s) for s in items):
                message = f"{key} is a list of 1 to {MAX_TARGET_ITEMS} names of at most {MAX_TEXT} characters."
                raise _refuse("invalid_target", f"{field}.{key}", message)
            out[key] = sorted(set(items))
    if "labels" in target:
        labels = target["labels"]
        ok = isinstance(labels, dict) and 1 <= len(labels) <= MAX_TARGET_ITEMS
        if not ok or not all(_text(k) and _text(v, blank=True) for k, v in labels.items()):
            message = f"labels is an object of 1 to {MAX_TARGET_ITEMS} text labels of at most {MAX_TEXT} characters."
            raise _refuse("invalid_target", f"{field}.labels", message)
        out["labels"] = dict(sorted(labels.items()))
    if "running_model" in target:
        name = target["running_model"]
        if not _text(name):
            raise _refuse("invalid_target", f"{field}.running_model", "running_model is a model name.")
        out["running_model"] = name
    return out

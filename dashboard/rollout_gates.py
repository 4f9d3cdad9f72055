"""How a stored gate result reads on the rollout page: its measure and threshold with units and comparison.

Most gates pass at or under their threshold (``rollouts.gates.judge``); the
shadow gates, the canary analysis's score and the activation count pass at or
over it. A gate without a figure says why: it abstained (too few frames or
samples, counted only until the soak can no longer be extended) or has no
data yet. Nothing here judges: the verdict shown is the one the scheduler stored.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from rollouts.gates import BUDGET_SHARE
from rollouts.models import GateResult

AT_MOST, AT_LEAST = "\N{LESS-THAN OR EQUAL TO}", "\N{GREATER-THAN OR EQUAL TO}"


def _number(value: float) -> str:
    return f"{value:.4g}"


def _percent(value: float) -> str:
    # Already a percentage (failed installs, silent devices).
    return f"{value:.3g} %"


def _share(value: float) -> str:
    # A fraction shown as a percentage (0.2 -> 20 %).
    return f"{value * 100:.3g} %"


def _ms(value: float) -> str:
    return f"{value:.1f} ms"


def _count(one: str, many: str) -> Callable[[float], str]:
    return lambda value: f"{value:,.0f} {one if value == 1 else many}"


@dataclass(frozen=True)
class GateForm:
    label: str
    sign: str
    show: Callable[[float], str]


GATE_FORMS: dict[str, GateForm] = {
    "activation": GateForm("Devices active after install", AT_LEAST, _count("device", "devices")),
    "failed_installs": GateForm("Failed installs", AT_MOST, _percent),
    "silent_devices": GateForm("Silent devices", AT_MOST, _percent),
    "error_rate_rise": GateForm("Error rate rise (absolute)", AT_MOST, _number),
    "latency_p95_ms_regression": GateForm("p95 latency regression", AT_MOST, _share),
    "mean_confidence_drop": GateForm("Mean confidence drop", AT_MOST, _number),
    "escalation_rate_rise": GateForm("Escalation rate rise (absolute)", AT_MOST, _number),
    "site_latency_budget": GateForm("p95 latency within site budget", AT_MOST, _ms),
    "drift": GateForm("Drift from reference (PSI)", AT_MOST, _number),
    "class_mix_shift": GateForm("Class mix shift (PSI)", AT_MOST, _number),
    "canary_analysis": GateForm("Canary analysis score", AT_LEAST, lambda v: f"{v:.3g} / 100"),
    "shadow_frames": GateForm("Shadow frames decided", AT_LEAST, _count("frame", "frames")),
    "shadow_agreement": GateForm("Shadow agreement", AT_LEAST, _share),
}
VERDICT_CLASS = {"pass": "online", "marginal": "fallback", "fail": "offline", "pending": "neutral"}


@dataclass(frozen=True)
class GateRow:
    result: GateResult
    label: str
    measured: str
    threshold: str
    verdict: str  # pass, marginal, fail, pending or abstained
    badge: str
    why: str  # why it abstained or has no figure; empty otherwise


def abstention(result: GateResult) -> str:
    """Why a pending gate abstained (left the verdict to the others), or '' when it did not."""
    details = result.details if isinstance(result.details, dict) else {}
    if result.verdict != "pending":
        return ""
    if "min_frames" in details:
        now = details.get("frames_current", details.get("frames"))
        before = details.get("frames_baseline")
        seen = ", ".join(
            f"{count:,} {when}" for count, when in ((now, "since the install"), (before, "before")) if count is not None
        )
        return f"too few frames to judge ({seen}; {details['min_frames']:,} needed on each side)"
    if details.get("analysis") == "insufficient":
        return str(details.get("detail") or "too few samples to judge")
    return ""


def gate_row(result: GateResult) -> GateRow:
    form = GATE_FORMS.get(result.gate, GateForm(result.gate.replace("_", " ").capitalize(), AT_MOST, _number))
    why = abstention(result)
    verdict = "abstained" if why else result.verdict
    if result.value is None or why:
        measured = "not measured"
        why = why or "no data yet"
    else:
        measured = form.show(result.value)
    if result.threshold is not None:
        threshold = f"{form.sign} {form.show(result.threshold)}"
    elif result.gate == "site_latency_budget":
        threshold = f"{AT_MOST} {BUDGET_SHARE * 100:.0f} % of each site's budget"
    else:
        threshold = "not set"
    badge = "neutral" if why else VERDICT_CLASS.get(result.verdict, "neutral")
    return GateRow(result, form.label, measured, threshold, verdict, badge, why)


ORDER = {name: i for i, name in enumerate(GATE_FORMS)}


def gate_rows(results: list[GateResult]) -> tuple[list[GateRow], list[GateRow]]:
    """Each gate's newest result, in the order the scheduler runs them; then the earlier ones, newest first.

    A marginal soak is extended and judged again, so a stage can hold several results of one gate.
    """
    ordered = sorted(results, key=lambda r: (r.evaluated_at, r.pk), reverse=True)
    latest: dict[str, GateResult] = {}
    earlier = []
    for result in ordered:
        if result.gate in latest:
            earlier.append(gate_row(result))
        else:
            latest[result.gate] = result
    shown = sorted(latest.values(), key=lambda r: (ORDER.get(r.gate, len(ORDER)), r.gate))
    return [gate_row(r) for r in shown], earlier

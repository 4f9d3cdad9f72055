"""The health gates a stage must pass after its soak, each a function of one stage's telemetry.

``SOAK_GATES`` is the list the scheduler runs, in order; a gate is any
callable taking a ``StageData`` and returning an ``Outcome``, so a further
judge (a matched-control canary analysis) is one more entry. Every figure
comes from ``telemetry.baseline.compare_to_baseline``: the stage's active
devices since they all became active, against their own stretch before.

A gate that has nothing to judge (no site of the stage has a latency
budget) returns None and is not recorded.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from rollouts import analysis
from telemetry import drift as drift_stats
from telemetry.baseline import BaselineComparison, baseline_window_start, compare_to_baseline, matched_control
from telemetry.metrics import Summary

PASS, MARGINAL, FAIL, PENDING = "pass", "marginal", "fail", "pending"


@dataclass(frozen=True)
class StageData:
    devices: list[str]  # every device of the stage
    active: list[str]  # those that reported the version active
    comparison: BaselineComparison  # of the active ones
    settings: dict[str, Any]
    since: datetime  # when the last of them became active
    now: datetime
    active_by_site: dict[str, list[str]] = field(default_factory=dict)  # site slug -> its active stage devices
    budgets: dict[str, int] = field(default_factory=dict)  # site slug -> p95 latency budget (ms), where set
    model: tuple[str, str] = ("", "")  # the version rolled out: (model name, version)
    control_candidates: list[str] = field(default_factory=list)  # rollout devices not sent the version yet


@dataclass(frozen=True)
class Outcome:
    gate: str
    value: float | None
    threshold: float | None
    verdict: str
    details: dict[str, Any] = field(default_factory=dict)
    # A pending outcome that stops counting once the soak cannot be extended any more: the gate
    # abstains (too few samples to judge) and leaves the verdict to the others.
    abstains: bool = False


def judge(value: float | None, threshold: float, band: float) -> str:
    """pass at or under the threshold, marginal a little over it (the band), fail past that; pending without data."""
    if value is None:
        return PENDING
    if value <= threshold:
        return PASS
    if value <= threshold * (1 + band) + 1e-12 and threshold > 0:
        return MARGINAL
    return FAIL


def failed_installs(devices: list[str], failed: list[str], max_pct: float) -> Outcome:
    pct = 100.0 * len(failed) / len(devices) if devices else 0.0
    verdict = PASS if pct <= max_pct else FAIL
    return Outcome("failed_installs", pct, max_pct, verdict, {"failed": sorted(failed)[:50]})


def shadow_agreement(summary: Summary, settings: dict[str, Any]) -> list[Outcome]:
    """A shadow stage's gates: enough frames decided by the candidate, and enough of them agreed.

    Too few frames is pending (the shadow runs longer, then fails); agreement
    below ``min_shadow_agreement`` fails at once: the candidate never acted.
    """
    frames, wanted = summary.shadow_frames, int(settings["min_shadow_frames"])
    enough = Outcome("shadow_frames", float(frames), float(wanted), PASS if frames >= wanted else PENDING)
    agreement, floor = summary.shadow_agreement, float(settings["min_shadow_agreement"])
    if agreement is None or frames < wanted:
        verdict = PENDING
    else:
        verdict = PASS if agreement >= floor else FAIL
    details = {
        "compared": summary.shadow_compared,
        "agreed": summary.shadow_agreed,
        "errors": summary.shadow_errors,
        "candidate_p95_ms": summary.shadow_latency.quantile(0.95),
    }
    return [enough, Outcome("shadow_agreement", agreement, floor, verdict, details)]


def silent_devices(data: StageData) -> Outcome:
    silent = [d for d in data.comparison.silent_devices if d in set(data.active)]
    pct = 100.0 * len(silent) / len(data.devices) if data.devices else 0.0
    threshold = float(data.settings["max_silent_pct"])
    return Outcome("silent_devices", pct, threshold, PASS if pct <= threshold else FAIL, {"silent": silent[:50]})


def _figure_gate(name: str, setting: str, measure: Callable[[BaselineComparison], float | None]) -> Gate:
    def gate(data: StageData) -> Outcome:
        value = measure(data.comparison)
        threshold = float(data.settings[setting])
        figure = name.removesuffix("_rise").removesuffix("_regression").removesuffix("_drop")
        details: dict[str, Any] = {
            "frames_baseline": data.comparison.frames_baseline,
            "frames_current": data.comparison.frames_current,
        }
        source = data.comparison.figures.get(figure)
        if source is not None:
            details.update(baseline=source.baseline, current=source.current)
        return Outcome(name, value, threshold, judge(value, threshold, float(data.settings["marginal_band"])), details)

    gate.__name__ = name
    return gate


# The share of a site's latency budget a new version may use: 20 % is kept as headroom.
BUDGET_SHARE = 0.8


def site_latency_budget(data: StageData) -> Outcome | None:
    """Each site's stage devices, together, keep their p95 latency under 80 % of the site's budget.

    The worst site (by p95 over its allowance) gives the value and threshold; every site is in the details.
    """
    sites = {}
    worst: tuple[float, float, float] | None = None  # (ratio, p95, allowed)
    for slug, budget in sorted(data.budgets.items()):
        devices = data.active_by_site.get(slug)
        if not devices:
            continue
        comparison = compare_to_baseline(devices, data.since, now=data.now, candidate=data.model)
        p95 = comparison.figures["latency_p95_ms"].current
        allowed = budget * BUDGET_SHARE
        sites[slug] = {"p95_ms": p95, "budget_ms": budget, "allowed_ms": allowed}
        if p95 is not None and (worst is None or p95 / allowed > worst[0]):
            worst = (p95 / allowed, p95, allowed)
    if not sites:
        return None
    if worst is None:
        return Outcome("site_latency_budget", None, None, PENDING, {"sites": sites})
    _, p95, allowed = worst
    return Outcome(
        "site_latency_budget",
        p95,
        allowed,
        judge(p95, allowed, float(data.settings["marginal_band"])),
        {"sites": sites},
    )


# Fewest frames on each side before a class-mix PSI is read. Sampling noise alone gives a PSI of about
# (classes - 1) * (1/n1 + 1/n2): five classes at 200 frames a side come to about 0.04, a sixth of the
# threshold. (Confidence has 20 bins and needs telemetry.drift's 1,000.)
CLASS_MIX_MIN_FRAMES = 200
# Added to every class's count on both sides before the PSI (Jeffreys' half-count): a class seen on 4 of
# 160 frames before and on none of 120 after is sampling, not a shift; with a floor of 1e-4 for the empty
# side instead it alone would add 0.14 to the PSI.
CLASS_MIX_PRIOR = 0.5


def drift(data: StageData) -> Outcome | None:
    """How much further the candidate drifts from its reference distribution than its devices did before it.

    The drift of the stage's windows on the candidate from the reference
    distribution CI published with it (PSI, the worse of confidence and class
    mix, ``telemetry.drift``), less the drift of the same devices' windows
    before the stage from that same reference: a camera whose lamp failed
    drifts under every version, which is its site's problem, not this
    release's. Not recorded for a version published without a reference
    distribution (its field baseline would be made of this very stage). Too
    few frames on either stretch abstains.
    """
    name, version = data.model
    reference = drift_stats.reference_baseline(name, version) if data.active else None
    if reference is None:
        return None
    current, before = data.comparison.current_summary, data.comparison.baseline_summary
    frames, frames_before = sum(current.confidence), sum(before.confidence)
    threshold = float(data.settings["max_drift_psi"])
    details: dict[str, Any] = {"frames": frames, "frames_baseline": frames_before, "reference_frames": reference.frames}
    if min(frames, frames_before, reference.frames) < drift_stats.MIN_FRAMES:
        details["min_frames"] = drift_stats.MIN_FRAMES
        return Outcome("drift", None, threshold, PENDING, details, abstains=True)
    now, earlier = _worst_psi(reference, current), _worst_psi(reference, before)
    value = max(0.0, now - earlier)
    details.update(psi=now, psi_before=earlier)
    return Outcome("drift", value, threshold, judge(value, threshold, float(data.settings["marginal_band"])), details)


def _worst_psi(reference: Any, summary: Summary) -> float:
    """The worse of the confidence and class-mix PSIs of ``summary`` against a reference distribution."""
    classes = drift_stats.class_psi(reference.classes, summary.classes)
    return max(drift_stats.psi(reference.confidence, summary.confidence), classes if classes is not None else 0.0)


def class_mix_shift(data: StageData) -> Outcome | None:
    """Do the candidate's answers still look like production's? Its class mix against the version before.

    The stage's devices on the candidate against the same devices on the
    version they ran before, over the comparison's two stretches (PSI). A
    release that is confidently wrong keeps its confidence and changes what it
    answers: this gate sees it at a canary without a shadow stage. A release
    meant to answer differently (a new class, a fixed bias) needs a higher
    ``max_class_mix_psi`` for its rollout. Too few frames on a side abstains.
    """
    before = data.comparison.baseline_summary.classes
    after = data.comparison.current_summary.classes
    counts = (sum(before.values()), sum(after.values()))
    if not data.active or not any(counts):
        return None
    threshold = float(data.settings["max_class_mix_psi"])
    details: dict[str, Any] = {
        "frames_baseline": counts[0],
        "frames_current": counts[1],
        "baseline": dict(before),
        "current": dict(after),
    }
    if min(counts) < CLASS_MIX_MIN_FRAMES:
        details["min_frames"] = CLASS_MIX_MIN_FRAMES
        return Outcome("class_mix_shift", None, threshold, PENDING, details, abstains=True)
    labels = sorted(set(before) | set(after))
    value = drift_stats.psi(
        [before.get(label, 0) + CLASS_MIX_PRIOR for label in labels],
        [after.get(label, 0) + CLASS_MIX_PRIOR for label in labels],
    )
    band = float(data.settings["marginal_band"])
    return Outcome("class_mix_shift", value, threshold, judge(value, threshold, band), details)


# At most this many control devices: past it the test gains little and the query grows.
MAX_CONTROL = 50


def canary_analysis(data: StageData) -> Outcome | None:
    """The stage's devices against a matched control group still on the old version (``rollouts.analysis``).

    The control is the rollout's devices not yet sent the version, matched by
    hardware profile and sites (``matched_control``), over the same minutes;
    with none left (the last stage) the stage devices' own minutes before
    they became active. The value is the analysis's score (0-100), the
    threshold its pass score; too few samples to judge is ``pending`` and
    abstains once the soak cannot be extended.
    """
    if not data.active:
        return None
    name, version = data.model
    canary = analysis.samples(data.active, data.since, data.now, model_name=name, model_version=version)
    control_ids = matched_control(data.active, data.control_candidates, limit=MAX_CONTROL)
    if control_ids:
        control = analysis.samples(control_ids, data.since, data.now, model_name=name)
        kind = "matched"
    else:
        control = analysis.samples(data.active, baseline_window_start(data.since, data.now), data.since)
        kind = "own_baseline"
    judged = analysis.judge(canary, control)
    verdict = {"pass": PASS, "marginal": MARGINAL, "fail": FAIL}.get(judged.verdict, PENDING)
    details = {
        "analysis": judged.verdict,
        "detail": judged.detail,
        "control": kind,
        "control_devices": len(control_ids),
        "metrics": [
            {
                "name": m.name,
                "verdict": m.verdict,
                "canary_n": m.canary_n,
                "control_n": m.control_n,
                "canary_median": m.canary_median,
                "control_median": m.control_median,
                "effect": m.effect,
                "p_value": m.p_value,
            }
            for m in judged.metrics
        ],
    }
    return Outcome("canary_analysis", judged.score, analysis.PASS_SCORE, verdict, details, abstains=verdict == PENDING)


Gate = Callable[[StageData], Outcome | None]

SOAK_GATES: list[Gate] = [
    silent_devices,
    _figure_gate("error_rate_rise", "max_error_rate_rise", lambda c: c.error_rate_rise),
    _figure_gate("latency_p95_ms_regression", "max_p95_latency_regression", lambda c: c.p95_latency_regression),
    _figure_gate("mean_confidence_drop", "max_confidence_drop", lambda c: c.mean_confidence_drop),
    _figure_gate("escalation_rate_rise", "max_escalation_rate_rise", lambda c: c.escalation_rate_rise),
    site_latency_budget,
    drift,
    class_mix_shift,
    canary_analysis,
]


def verdict(outcomes: list[Outcome], *, final: bool = False) -> str:
    """fail if any gate fails; marginal if any is marginal or lacks data; pass otherwise.

    ``final`` (the soak cannot be extended again): gates that abstain no longer count.
    """
    verdicts = {o.verdict for o in outcomes if not (final and o.abstains)}
    if FAIL in verdicts:
        return FAIL
    if verdicts & {MARGINAL, PENDING}:
        return MARGINAL
    return PASS

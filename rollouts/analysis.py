"""Automated canary analysis: is a rollout stage's canary group worse than its control group?

Judged the way Kayenta (Spinnaker) and Argo Rollouts judge a canary, not by a
bare threshold on a mean:

* **Samples.** One sample per device-minute and metric, read from the
  device-minute rollups (``samples``, over ``telemetry.baseline.window_samples``),
  for the canary devices and for a control group over the *same* minutes.
  The control is the caller's choice: devices still on the old version with
  the canary's hardware profile, at its sites where possible
  (``telemetry.baseline.matched_control`` picks them from the devices the
  caller says are on the old version). With no such devices left, the
  canary's own minutes before the stage began are the fallback control
  (``telemetry.baseline.baseline_window_start``), weaker because time of day
  and load no longer cancel out.
* **Test.** Per metric, the Mann-Whitney U test, one-sided in the direction
  that is worse (``MetricSpec.worse``): no assumption about the shape of the
  distribution (per-minute p95 latencies are skewed, rates pile up at zero).
* **Effect size.** The Hodges-Lehmann shift (the median of every canary minus
  control difference) relative to the control median, signed so that a
  positive effect is worse. Rates that are zero in most minutes (errors) have
  a shift of zero even when the canary errs far more often; there the
  difference of the means is used. The control level is floored
  (``MetricSpec.floor``) so a rise from zero is a finite effect.
* **Per metric.** ``fail`` only when the test is significant (p < ``alpha``)
  *and* the effect is beyond the metric's tolerance: a noisy but equal canary
  is not significant, and a tiny difference made significant by thousands of
  samples is within tolerance. ``marginal`` when the effect is beyond
  tolerance but not (yet) significant: more minutes will tell. ``insufficient``
  below ``min_samples`` on either side. Otherwise ``pass``.
* **Score and verdict.** Metrics carry weights in groups (latency, errors,
  quality); the score is the share of weight, out of 100, held by passing
  metrics among those with enough data (Kayenta's score). A critical metric
  that fails fails the stage whatever the score; a critical metric without
  enough data makes the judgement ``insufficient``, a marginal one makes it
  ``marginal``. Otherwise ``pass`` from ``pass_score``, ``marginal`` from
  ``marginal_score`` (the caller extends the soak), else ``fail``; but never
  ``fail`` without a failed metric: marginal metrics lower the score, yet
  nothing is shown to be worse until one fails.

Defaults and why:

* ``min_samples = 50`` device-minutes per side and metric: Kayenta's guidance
  of at least 50 data points per metric. A device rolls up one sample a minute,
  so a one-device canary is judged after 50 minutes of soak, two devices after
  25, five after 10; the control group (ten devices) has them in five. At 50
  canary samples against a larger control the Hodges-Lehmann shift of a
  per-minute p95 that varies by 20 % from minute to minute is known to about
  +-3 %, well inside the 10 % latency tolerance, so an equal canary seldom
  looks 10 % worse by chance; with 20 samples it would be +-5 %.
* ``alpha = 0.01`` one-sided: Kayenta's judge works at a 98 % confidence level
  (1 % each side). Five metrics are tested per judgement, so at 0.05 nearly
  one equal canary in four would find something "significant".
* ``pass_score = 95``, ``marginal_score = 75``: Kayenta's defaults. With the
  default weights one failing quality metric of weight 10 (escalation or
  dropped frames) leaves 90, marginal: soak longer; mean confidence (weight
  30) failing alone leaves 70, a fail.

Samples of one device are not independent of each other (a hot enclosure
is slow all day); the matched control group, not the test, is what keeps
such device differences from looking like a version effect, which is why a
control at the canary's own sites is preferred.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

import numpy as np
from scipy.stats import mannwhitneyu

from telemetry.baseline import window_samples

Verdict = Literal["pass", "marginal", "fail", "insufficient"]

# Pairs beyond this make the Hodges-Lehmann median from evenly spaced
# quantiles of each side instead of every pair (memory: 8 bytes a pair).
MAX_PAIRS = 1_000_000


@dataclass(frozen=True)
class MetricSpec:
    """One metric the analysis judges.

    ``tolerance`` is the relative effect (0.10: 10 % worse than the control's
    median) allowed before the metric counts as worse; ``floor`` the smallest
    control level the effect is measured against, so a rise from zero (an
    error rate) is a finite effect: with floor 0.005, a rise of 0.1 percentage
    point over a control at zero is an effect of 0.2.
    """

    name: str
    worse: Literal["higher", "lower"]
    group: str
    weight: float
    critical: bool = False
    tolerance: float = 0.0
    floor: float = 0.0


DEFAULT_METRICS: tuple[MetricSpec, ...] = (
    MetricSpec("latency_p95_ms", "higher", "latency", 25.0, critical=True, tolerance=0.10, floor=1.0),
    MetricSpec("error_rate", "higher", "errors", 25.0, critical=True, tolerance=0.20, floor=0.005),
    MetricSpec("dropped_rate", "higher", "errors", 10.0, tolerance=0.50, floor=0.01),
    MetricSpec("mean_confidence", "lower", "quality", 30.0, tolerance=0.05, floor=0.05),
    MetricSpec("escalation_rate", "higher", "quality", 10.0, tolerance=0.25, floor=0.01),
)

MIN_SAMPLES = 50
ALPHA = 0.01
PASS_SCORE = 95.0
MARGINAL_SCORE = 75.0


@dataclass(frozen=True)
class MetricResult:
    """The analysis of one metric. ``effect`` is relative and positive when the canary is worse."""

    name: str
    canary_n: int
    control_n: int
    canary_median: float | None
    control_median: float | None
    effect: float | None
    p_value: float | None
    verdict: Verdict
    detail: str


@dataclass(frozen=True)
class Judgement:
    """The stage's verdict, its score (0-100) and each metric's result."""

    verdict: Verdict
    score: float
    metrics: tuple[MetricResult, ...]
    detail: str


def judge(
    canary: Mapping[str, Sequence[float]],
    control: Mapping[str, Sequence[float]],
    metrics: Sequence[MetricSpec] = DEFAULT_METRICS,
    *,
    min_samples: int = MIN_SAMPLES,
    alpha: float = ALPHA,
    pass_score: float = PASS_SCORE,
    marginal_score: float = MARGINAL_SCORE,
) -> Judgement:
    """Judge the canary's samples against the control's, metric by metric (module docstring).

    ``canary`` and ``control`` map a metric name to its samples (one per
    device-minute, as ``samples`` returns them); a metric missing from either
    has no samples. Non-finite samples are left out.
    """
    if min_samples < 2:
        raise ValueError(f"min_samples must be at least 2, not {min_samples}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be within (0, 1), not {alpha}")
    if not 0.0 <= marginal_score <= pass_score <= 100.0:
        raise ValueError(f"need 0 <= marginal_score <= pass_score <= 100, not {marginal_score}, {pass_score}")
    names = [spec.name for spec in metrics]
    if not names or len(set(names)) != len(names):
        raise ValueError(f"metrics must be non-empty with distinct names: {names}")
    if any(spec.weight < 0 or spec.tolerance < 0 or spec.floor < 0 for spec in metrics):
        raise ValueError("weights, tolerances and floors cannot be negative")

    results = tuple(
        _judge_metric(spec, canary.get(spec.name, ()), control.get(spec.name, ()), min_samples, alpha)
        for spec in metrics
    )
    by_name = {spec.name: spec for spec in metrics}
    judged = [r for r in results if r.verdict != "insufficient"]
    total = sum(by_name[r.name].weight for r in judged)
    passed = sum(by_name[r.name].weight for r in judged if r.verdict == "pass")
    score = round(100.0 * passed / total, 1) if total > 0 else 0.0

    critical_failed = [r.name for r in results if by_name[r.name].critical and r.verdict == "fail"]
    critical_short = [r.name for r in results if by_name[r.name].critical and r.verdict == "insufficient"]
    critical_marginal = [r.name for r in results if by_name[r.name].critical and r.verdict == "marginal"]
    failed = [r.name for r in results if r.verdict == "fail"]
    marginal = [r.name for r in results if r.verdict == "marginal"]
    short = [r.name for r in results if r.verdict == "insufficient"]

    verdict: Verdict
    if critical_failed:
        verdict, detail = "fail", f"critical metric failed: {', '.join(critical_failed)}"
    elif critical_short or not judged:
        verdict = "insufficient"
        detail = f"fewer than {min_samples} samples on a side for: {', '.join(short)}"
    elif critical_marginal:
        verdict, detail = "marginal", f"score {score:g}, critical metric marginal: {', '.join(critical_marginal)}"
    elif score >= pass_score:
        verdict, detail = "pass", f"score {score:g} >= {pass_score:g}"
    elif score >= marginal_score or not failed:
        # Without a failed metric nothing is shown to be worse yet, however low the score.
        verdict, detail = "marginal", f"score {score:g} < {pass_score:g}"
    else:
        verdict, detail = "fail", f"score {score:g} < {marginal_score:g}"
    notes = [f"{label}: {', '.join(which)}" for label, which in (("failed", failed), ("marginal", marginal)) if which]
    if short and verdict != "insufficient":
        notes.append(f"left out for too few samples: {', '.join(short)}")
    if notes:
        detail = f"{detail} ({'; '.join(notes)})"
    return Judgement(verdict=verdict, score=score, metrics=results, detail=detail)


def samples(
    device_ids: Sequence[str],
    since: datetime,
    until: datetime,
    *,
    model_name: str | None = None,
    model_version: str | None = None,
) -> dict[str, list[float]]:
    """The devices' samples per metric over ``[since, until)``: one per device-minute (``judge``'s input)."""
    return window_samples(device_ids, since, until, model_name=model_name, model_version=model_version)


def _judge_metric(
    spec: MetricSpec, canary: Sequence[float], control: Sequence[float], min_samples: int, alpha: float
) -> MetricResult:
    a = _finite(canary)
    b = _finite(control)
    a_median = float(np.median(a)) if a.size else None
    b_median = float(np.median(b)) if b.size else None
    if a.size < min_samples or b.size < min_samples:
        return MetricResult(
            spec.name,
            int(a.size),
            int(b.size),
            a_median,
            b_median,
            None,
            None,
            "insufficient",
            f"{a.size} canary and {b.size} control samples, {min_samples} needed on each side",
        )
    assert a_median is not None and b_median is not None
    sign = 1.0 if spec.worse == "higher" else -1.0
    shift = _hodges_lehmann(a, b)
    if shift == 0.0:
        # Mostly-zero rates: the median difference is zero however often the canary errs.
        shift = float(a.mean() - b.mean())
    scale = max(abs(b_median), spec.floor)
    effect = sign * shift / scale if scale > 0 else None
    test = mannwhitneyu(a, b, alternative="greater" if spec.worse == "higher" else "less", method="asymptotic")
    p = float(test.pvalue)
    if math.isnan(p):
        p = 1.0  # every sample equal on both sides: nothing to tell them apart
    # Rank-biserial correlation: P(canary worse) - P(canary better) over all pairs, in [-1, 1].
    rank_biserial = sign * (2.0 * float(test.statistic) / (a.size * b.size) - 1.0)
    beyond = effect > spec.tolerance if effect is not None else sign * shift > 0
    significant = p < alpha
    verdict: Verdict = "fail" if beyond and significant else "marginal" if beyond else "pass"
    if effect is None:
        effect_text = f"{abs(shift):.4g} {'worse' if sign * shift > 0 else 'better'} (control at zero)"
    else:
        effect_text = f"{abs(effect):.1%} {'worse' if effect > 0 else 'better'}"
    detail = (
        f"canary median {a_median:.4g} (n={a.size}) vs control {b_median:.4g} (n={b.size}): "
        f"effect {effect_text}, tolerance {spec.tolerance:.0%}, p={p:.2g} "
        f"({'<' if significant else '>='} {alpha:g}), rank-biserial {rank_biserial:+.2f}"
    )
    return MetricResult(spec.name, int(a.size), int(b.size), a_median, b_median, effect, p, verdict, detail)


def _finite(values: Sequence[float]) -> np.ndarray:
    array = np.asarray(values, dtype=float)
    return array[np.isfinite(array)]


def _hodges_lehmann(a: np.ndarray, b: np.ndarray) -> float:
    """The median of every difference a_i - b_j: the location shift the Mann-Whitney test goes with."""
    if a.size * b.size > MAX_PAIRS:
        keep = math.sqrt(MAX_PAIRS / (a.size * b.size))
        a = np.quantile(a, np.linspace(0.0, 1.0, max(2, int(a.size * keep))))
        b = np.quantile(b, np.linspace(0.0, 1.0, max(2, int(b.size * keep))))
    return float(np.median(np.subtract.outer(a, b)))

"""The prediction gates: a canary that answers differently from production, or unlike its own reference, is stopped.

Neither release here is slower or less confident on average, so every figure
gate passes it: one answers the other class on most frames (confidently wrong),
the other keeps its mean confidence and changes the shape of its distribution.
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone

import pytest
from django.utils import timezone as django_timezone

from agent.kernel import histogram
from registry.models import ModelVersion
from rollouts import gates
from rollouts.models import GateResult, Rollout, RolloutDevice
from telemetry.baseline import BaselineComparison
from telemetry.metrics import Summary
from tests.rollouts.conftest import sent_to, window
from tests.rollouts.helpers import drive, start_rollout

pytestmark = pytest.mark.django_db


def results(rollout: Rollout) -> dict[str, GateResult]:
    return {g.gate: g for g in GateResult.objects.filter(stage__rollout=rollout, stage__index=0).order_by("pk")}


def test_a_confidently_wrong_canary_is_halted_by_its_class_mix_against_production(versions, fleet_on_v1):
    v1, v2 = versions
    rollout = start_rollout(v2)

    drive(rollout, v1, v2, answers=("scratch", "ok"))

    rollout.refresh_from_db()
    assert rollout.state == Rollout.REVERTED and rollout.current_stage == 0
    judged = results(rollout)
    shift = judged["class_mix_shift"]
    assert shift.verdict == "fail" and shift.value > 1.0 and shift.threshold == 0.25
    assert shift.details["baseline"]["ok"] > shift.details["baseline"]["scratch"]
    assert shift.details["current"]["scratch"] > shift.details["current"]["ok"]
    # As confident and as fast as production: only the answers give it away.
    assert judged["mean_confidence_drop"].verdict == judged["latency_p95_ms_regression"].verdict == "pass"
    assert len(sent_to(rollout.pk, RolloutDevice.REVERTED)) == 1


def test_a_canary_unlike_its_reference_distribution_is_halted_by_drift_though_its_mean_holds(versions, fleet_on_v1):
    v1, v2 = versions
    # CI measured the candidate at Beta(6, 2) confidences (mean 0.75); in the field it answers Beta(0.6, 0.2),
    # the same mean, piled at both ends: half its frames sure, the rest barely above a guess.
    rng = random.Random(3)
    reference = {
        "confidence": histogram.confidence_histogram([rng.betavariate(6, 2) for _ in range(5000)]),
        "classes": {"ok": 4500, "scratch": 500},
    }
    ModelVersion.objects.filter(pk=v2.pk).update(reference_distribution=reference)
    # Ten minutes of the fleet on 1.0.0 before the release: the stretch the drift before it is read from.
    start = django_timezone.now().replace(second=0, microsecond=0) - timedelta(minutes=40)
    for device in fleet_on_v1:
        for minute in range(10):
            window(device, start + timedelta(minutes=minute), v1, seed=minute)
    rollout = start_rollout(v2)

    drive(rollout, v1, v2, confidence=(0.6, 0.2))

    rollout.refresh_from_db()
    assert rollout.state == Rollout.REVERTED
    judged = results(rollout)
    assert judged["drift"].verdict == "fail" and judged["drift"].value > 0.25
    assert judged["drift"].details["psi_before"] < 0.05
    assert judged["mean_confidence_drop"].verdict == "pass"


def test_a_good_canary_passes_both_and_a_version_without_a_reference_is_not_judged_on_drift(versions, fleet_on_v1):
    v1, v2 = versions
    rollout = start_rollout(v2)

    drive(rollout, v1, v2)

    rollout.refresh_from_db()
    assert rollout.state == Rollout.COMPLETED
    judged = results(rollout)
    assert judged["class_mix_shift"].verdict == "pass" and judged["class_mix_shift"].value < 0.05
    assert "drift" not in judged


def comparison(before: dict[str, int], after: dict[str, int]) -> BaselineComparison:
    at = datetime(2026, 12, 1, tzinfo=timezone.utc)
    summaries = []
    for classes in (before, after):
        summary = Summary()
        summary.classes.update(classes)
        summaries.append(summary)
    return BaselineComparison(at, at, 1, 0, 0, {}, baseline_summary=summaries[0], current_summary=summaries[1])


def stage(comparison: BaselineComparison) -> gates.StageData:
    now = datetime(2026, 12, 1, tzinfo=timezone.utc)
    settings = {"max_class_mix_psi": 0.25, "max_drift_psi": 0.25, "marginal_band": 0.25}
    return gates.StageData(["dev-1"], ["dev-1"], comparison, settings, now, now, model=("parts", "2.0.0"))


def test_too_few_frames_for_a_class_mix_abstain_instead_of_judging_noise() -> None:
    outcome = gates.class_mix_shift(stage(comparison({"ok": 900, "scratch": 100}, {"scratch": 150})))
    assert outcome is not None and (outcome.verdict, outcome.value, outcome.abstains) == ("pending", None, True)
    # An abstaining gate leaves the final verdict to the others.
    assert gates.verdict([outcome], final=True) == gates.PASS
    assert gates.verdict([outcome], final=False) == gates.MARGINAL
    assert gates.class_mix_shift(stage(comparison({}, {}))) is None


def test_drift_the_devices_showed_before_the_release_is_not_blamed_on_it(versions) -> None:
    """A site whose lamp failed drifts from the reference under the old version and the new one alike."""
    _, v2 = versions
    rng = random.Random(5)

    def frames(a: float, b: float) -> Summary:
        summary = Summary()
        for i, count in enumerate(histogram.confidence_histogram([rng.betavariate(a, b) for _ in range(20_000)])):
            summary.confidence[i] += count
        summary.classes.update({"ok": 18_000, "scratch": 2_000})
        return summary

    reference = {"confidence": histogram.confidence_histogram([rng.betavariate(6, 2) for _ in range(5000)])}
    ModelVersion.objects.filter(pk=v2.pk).update(
        reference_distribution={**reference, "classes": {"ok": 9, "scratch": 1}}
    )
    at = datetime(2026, 12, 1, tzinfo=timezone.utc)
    dark = BaselineComparison(at, at, 1, 0, 0, {}, baseline_summary=frames(2, 2), current_summary=frames(2, 2))
    outcome = gates.drift(stage(dark))
    assert outcome is not None and outcome.details["psi"] > 0.25 and outcome.details["psi_before"] > 0.25
    assert outcome.verdict == "pass" and outcome.value < 0.1, outcome.details


def test_a_rare_class_missing_from_a_short_stretch_is_not_read_as_a_shift() -> None:
    """Four of 260 frames were 'dark' before, none of 220 after: sampling, as the rest of the mix shows."""
    before = {"ok": 64, "crack": 64, "missing_hole": 64, "scratch": 64, "dark": 4}
    after = {"ok": 55, "crack": 55, "missing_hole": 55, "scratch": 55}
    outcome = gates.class_mix_shift(stage(comparison(before, after)))
    assert outcome is not None and outcome.verdict == "pass" and outcome.value < 0.05

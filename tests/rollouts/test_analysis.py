"""Canary analysis: a canary group judged against a control group, metric by metric, like Kayenta."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from typing import Any

import numpy as np
import pytest

from agent.kernel import protocol
from fleet.models import Device, Site
from rollouts.analysis import DEFAULT_METRICS, MIN_SAMPLES, MetricSpec, judge, samples
from telemetry.baseline import matched_control
from telemetry.metrics import Summary
from telemetry.models import Resolution, Scope, WindowRollup
from tests.payloads import window_data

Samples = dict[str, list[float]]


def minutes(
    seed: int,
    devices: int,
    per_device: int,
    *,
    latency_ms: float = 40.0,
    latency_sigma: float = 0.15,
    confidence: float = 0.75,
    confidence_sd: float = 0.03,
    escalation_rate: float = 0.05,
    error_rate: float = 0.0,
    error_minutes: float = 0.02,
    dropped_rate: float = 0.01,
    device_sigma: float = 0.03,
) -> Samples:
    """Per device-minute figures of a group of devices, as ``samples`` returns them.

    Each device has its own level (``device_sigma``, log scale: placement,
    enclosure), and each minute varies around it. Errors come in a few minutes
    only (``error_minutes`` of them), the rest are zero, as in the field.
    """
    rng = np.random.default_rng(seed)
    out: Samples = {spec.name: [] for spec in DEFAULT_METRICS}
    for _ in range(devices):
        level = float(np.exp(rng.normal(0.0, device_sigma)))
        n = per_device
        out["latency_p95_ms"] += list(latency_ms * level * np.exp(rng.normal(0.0, latency_sigma, n)))
        out["mean_confidence"] += list(np.clip(rng.normal(confidence, confidence_sd, n), 0.0, 1.0))
        out["escalation_rate"] += list(np.clip(rng.normal(escalation_rate, escalation_rate / 4, n), 0.0, 1.0))
        erring = rng.random(n) < error_minutes
        out["error_rate"] += list(np.where(erring, rng.uniform(0.001, 0.01, n), 0.0) + error_rate)
        out["dropped_rate"] += list(np.clip(rng.normal(dropped_rate, dropped_rate / 2, n), 0.0, 1.0))
    return out


def verdicts(samples: Samples, control: Samples, **kwargs: Any) -> dict[str, str]:
    return {m.name: m.verdict for m in judge(samples, control, **kwargs).metrics}


# A small canary (2 devices) soaked 30 minutes, against 10 control devices over the same minutes.
CONTROL = minutes(1, devices=10, per_device=30)


def test_a_15_percent_p95_regression_on_a_small_canary_fails_where_a_20_percent_threshold_on_means_passes() -> None:
    canary = minutes(2, devices=2, per_device=30, latency_ms=40.0 * 1.15)
    mean_regression = np.mean(canary["latency_p95_ms"]) / np.mean(CONTROL["latency_p95_ms"]) - 1.0
    assert mean_regression < 0.20  # a fixed 20 % threshold on the means would let it through

    judgement = judge(canary, CONTROL)

    assert judgement.verdict == "fail"
    latency = judgement.metrics[0]
    assert (latency.name, latency.verdict, latency.canary_n, latency.control_n) == ("latency_p95_ms", "fail", 60, 300)
    assert latency.effect == pytest.approx(0.15, abs=0.05)
    assert latency.p_value is not None and latency.p_value < 1e-6
    assert "critical metric failed: latency_p95_ms" in judgement.detail
    assert {m.name: m.verdict for m in judgement.metrics[1:]} == dict.fromkeys(
        ("error_rate", "dropped_rate", "mean_confidence", "escalation_rate"), "pass"
    )


def test_a_noisy_but_equal_canary_passes() -> None:
    noisy = {"latency_sigma": 0.4, "confidence_sd": 0.1, "error_minutes": 0.1}
    control = minutes(3, devices=10, per_device=30, **noisy)  # type: ignore[arg-type]
    canary = minutes(4, devices=2, per_device=30, **noisy)  # type: ignore[arg-type]
    # The canary's minutes spread from less than half to more than double the median.
    spread = np.quantile(canary["latency_p95_ms"], [0.05, 0.95]) / np.median(canary["latency_p95_ms"])
    assert spread[0] < 0.6 and spread[1] > 1.8

    judgement = judge(canary, control)

    assert (judgement.verdict, judgement.score) == ("pass", 100.0)
    assert all(m.p_value is not None and m.p_value >= 0.01 for m in judgement.metrics)


def test_a_tiny_difference_made_significant_by_many_samples_passes() -> None:
    control = minutes(5, devices=100, per_device=200, latency_sigma=0.1)
    canary = minutes(6, devices=50, per_device=200, latency_ms=40.0 * 1.03, latency_sigma=0.1)

    latency = judge(canary, control).metrics[0]

    assert latency.p_value is not None and latency.p_value < 1e-6  # significant...
    assert latency.effect is not None and latency.effect < 0.10  # ...but within tolerance
    assert latency.verdict == "pass"


def test_too_few_samples_is_insufficient_not_a_pass() -> None:
    canary = minutes(7, devices=1, per_device=MIN_SAMPLES - 1, latency_ms=80.0)

    judgement = judge(canary, CONTROL)

    assert judgement.verdict == "insufficient"
    assert {m.verdict for m in judgement.metrics} == {"insufficient"}
    assert all(m.canary_n == MIN_SAMPLES - 1 and m.control_n == 300 for m in judgement.metrics)
    assert judgement.metrics[0].effect is None and judgement.metrics[0].p_value is None
    assert "latency_p95_ms" in judgement.detail


def test_a_metric_missing_on_one_side_is_insufficient() -> None:
    canary = minutes(8, devices=2, per_device=30)
    del canary["latency_p95_ms"]
    assert judge(canary, CONTROL).verdict == "insufficient"


def test_a_failing_critical_metric_fails_the_judgement_whatever_the_score() -> None:
    canary = minutes(9, devices=2, per_device=30, error_rate=0.02)
    # The critical metric weighs 1 in 100: the score alone would pass the canary.
    metrics = [replace(spec, weight=1.0 if spec.name == "error_rate" else 99.0 / 4) for spec in DEFAULT_METRICS]

    judgement = judge(canary, CONTROL, metrics)

    assert judgement.score == 99.0 and judgement.score >= 95.0
    assert judgement.verdict == "fail"
    assert verdicts(canary, CONTROL, metrics=metrics)["error_rate"] == "fail"
    assert judgement.detail.startswith("critical metric failed: error_rate")


def test_errors_in_more_minutes_fail_though_most_minutes_have_none() -> None:
    canary = minutes(10, devices=2, per_device=30, error_minutes=0.5)
    assert np.median(canary["error_rate"]) == 0.0 and np.median(CONTROL["error_rate"]) == 0.0

    error = judge(canary, CONTROL).metrics[1]

    assert (error.name, error.verdict) == ("error_rate", "fail")
    # Errors in half the minutes instead of 2 %: a mean rise of about 0.26 percentage points, over a floor of 0.5 %.
    assert error.effect == pytest.approx(0.48 * 0.0055 / 0.005, abs=0.15)


def test_a_confidence_collapse_fails_on_its_own() -> None:
    canary = minutes(11, devices=2, per_device=30, confidence=0.55)

    judgement = judge(canary, CONTROL)

    assert verdicts(canary, CONTROL) == {
        "latency_p95_ms": "pass",
        "error_rate": "pass",
        "dropped_rate": "pass",
        "mean_confidence": "fail",
        "escalation_rate": "pass",
    }
    # Not a critical metric, but it weighs 30 of 100: 70 is below the marginal score.
    assert (judgement.verdict, judgement.score) == ("fail", 70.0)
    confidence = judgement.metrics[3]
    assert confidence.effect == pytest.approx(0.2 / 0.75, abs=0.03)


def test_a_small_metric_failing_alone_is_marginal_and_the_caller_soaks_longer() -> None:
    canary = minutes(12, devices=2, per_device=30, dropped_rate=0.05)

    judgement = judge(canary, CONTROL)

    assert verdicts(canary, CONTROL)["dropped_rate"] == "fail"
    assert (judgement.verdict, judgement.score) == ("marginal", 90.0)


def test_an_effect_beyond_tolerance_but_not_yet_significant_is_marginal() -> None:
    noisy = {"latency_sigma": 0.6}
    control = minutes(13, devices=10, per_device=30, **noisy)  # type: ignore[arg-type]
    canary = minutes(14, devices=2, per_device=30, latency_ms=40.0 * 1.15, **noisy)  # type: ignore[arg-type]

    judgement = judge(canary, control)

    latency = judgement.metrics[0]
    assert latency.effect is not None and latency.effect > 0.10
    assert latency.p_value is not None and latency.p_value >= 0.01
    assert latency.verdict == "marginal"
    assert judgement.verdict == "marginal"  # a critical metric in doubt: soak longer


def test_a_better_canary_passes() -> None:
    canary = minutes(15, devices=2, per_device=30, latency_ms=30.0, confidence=0.85, escalation_rate=0.02)
    assert judge(canary, CONTROL).verdict == "pass"


def test_identical_constant_samples_pass() -> None:
    flat = {spec.name: [0.0] * 60 for spec in DEFAULT_METRICS}
    judgement = judge(flat, flat)
    assert judgement.verdict == "pass"
    assert all(m.p_value == 1.0 and m.effect == 0.0 for m in judgement.metrics)


def test_non_finite_samples_are_left_out() -> None:
    canary = minutes(16, devices=2, per_device=30)
    canary["latency_p95_ms"] += [float("nan"), float("inf")]
    assert judge(canary, CONTROL).metrics[0].canary_n == 60


@pytest.mark.parametrize(
    "kwargs",
    [
        {"min_samples": 1},
        {"alpha": 0.0},
        {"pass_score": 70.0, "marginal_score": 80.0},
        {"metrics": [DEFAULT_METRICS[0], DEFAULT_METRICS[0]]},
        {"metrics": [MetricSpec("x", "higher", "g", -1.0)]},
    ],
)
def test_it_refuses_settings_that_make_no_sense(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        judge(CONTROL, CONTROL, **kwargs)


# --- end to end: rollup rows in the database, samples(), judge() -----------

START = datetime(2026, 11, 22, 12, 0, tzinfo=timezone.utc)
SOAK = 30


def write_minutes(device: Device, rng: random.Random, *, latency_ms: float, model: str) -> None:
    """The device's minute rollups over the soak, as the rollup task would have built them."""
    name, version = model.split("@")
    rows = []
    for i in range(SOAK):
        bucket = START + timedelta(minutes=i)
        frames = 120
        data = window_data(
            bucket,
            [rng.lognormvariate(0.0, 0.2) * latency_ms for _ in range(frames)],
            [rng.betavariate(6, 2) for _ in range(frames)],
            rng.choices(["ok", "defect"], weights=[0.9, 0.1], k=frames),
            seconds=60,
            model=model,
            escalations=rng.randint(3, 9),
        )
        summary = Summary()
        summary.add_window(protocol.window_of(protocol.TelemetryRecord(seq=i + 1, kind="window", ts=bucket, data=data)))
        rows.append(
            WindowRollup(
                resolution=Resolution.MINUTE,
                scope=Scope.DEVICE,
                key=device.device_id,
                model_name=name,
                model_version=version,
                bucket=bucket,
                devices=1,
                **summary.totals(),
            )
        )
    WindowRollup.objects.bulk_create(rows)


@pytest.fixture
def fleet(site: Site, other_site: Site, enroll_device: Callable[..., Any]) -> dict[str, list[Device]]:
    """Two canary devices on 2.0.0 and ten control devices on 1.0.0, all Jetson Nanos, plus a Pi elsewhere."""
    canary = [enroll_device(site, name=f"canary-{i}", hardware_profile="jetson-nano").device for i in range(2)]
    control = [
        enroll_device(site if i < 6 else other_site, name=f"control-{i}", hardware_profile="jetson-nano").device
        for i in range(10)
    ]
    pi = enroll_device(site, name="pi", hardware_profile="rpi4").device
    return {"canary": canary, "control": control, "other": [pi]}


@pytest.mark.django_db
@pytest.mark.parametrize(("slowdown", "expected"), [(1.0, "pass"), (1.3, "fail")])
def test_end_to_end_a_slow_canary_fails_and_an_equal_one_passes(
    fleet: dict[str, list[Device]], slowdown: float, expected: str
) -> None:
    rng = random.Random(21)
    for device in fleet["canary"]:
        write_minutes(device, rng, latency_ms=20.0 * slowdown, model="detector@2.0.0")
    for device in fleet["control"] + fleet["other"]:
        write_minutes(
            device, rng, latency_ms=20.0 if device.hardware_profile == "jetson-nano" else 60.0, model="detector@1.0.0"
        )
    canary_ids = [d.device_id for d in fleet["canary"]]
    old_version = [d.device_id for d in fleet["control"] + fleet["other"]]
    control_ids = matched_control(canary_ids, old_version)
    assert sorted(control_ids) == sorted(d.device_id for d in fleet["control"])  # the Pi is no match
    until = START + timedelta(minutes=SOAK)

    judgement = judge(
        samples(canary_ids, START, until, model_name="detector", model_version="2.0.0"),
        samples(control_ids, START, until),
    )

    assert judgement.verdict == expected, judgement.detail
    latency = judgement.metrics[0]
    assert (latency.canary_n, latency.control_n) == (60, 300)
    if expected == "fail":
        assert latency.verdict == "fail" and latency.effect == pytest.approx(0.3, abs=0.1)

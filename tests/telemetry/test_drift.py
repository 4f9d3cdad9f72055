"""Drift by PSI: it fires on a shifted confidence distribution or class mix and stays quiet otherwise."""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from agent.kernel import histogram
from fleet.models import Device, Site
from registry.models import Model, ModelVersion
from telemetry import drift
from telemetry.models import Resolution, Scope, WindowRollup
from tests.telemetry.helpers import recent_windows

pytestmark = pytest.mark.django_db


def test_psi_is_zero_for_equal_distributions_and_grows_with_the_shift() -> None:
    base = [10, 20, 40, 20, 10]
    assert drift.psi(base, [1, 2, 4, 2, 1]) == pytest.approx(0.0)
    small, large = drift.psi(base, [12, 22, 38, 18, 10]), drift.psi(base, [40, 30, 20, 8, 2])
    assert 0 < small < drift.WATCH < drift.ALERT < large
    # The textbook value for two bins: (0.6-0.5)ln(0.6/0.5) + (0.4-0.5)ln(0.4/0.5).
    assert drift.psi([5, 5], [6, 4]) == pytest.approx(0.1 * math.log(1.2) - 0.1 * math.log(0.8))


def test_psi_refuses_histograms_it_cannot_compare() -> None:
    with pytest.raises(ValueError, match="same bins"):
        drift.psi([1, 2], [1, 2, 3])
    with pytest.raises(ValueError, match="samples"):
        drift.psi([0, 0], [1, 2])


@pytest.fixture
def device(site: Site, enroll_device: Callable[..., Any]) -> Device:
    return enroll_device(site).device


def reference(seed: int = 99, frames: int = 20_000) -> None:
    rng = random.Random(seed)
    confidences = histogram.confidence_histogram(rng.betavariate(6, 2) for _ in range(frames))
    classes = {"ok": int(frames * 0.9), "defect": frames - int(frames * 0.9)}
    model = Model.objects.create(name="detector", task="classification", labels=["ok", "defect"])
    ModelVersion.objects.create(
        model=model,
        version="1.0.0",
        sequence=1,
        content_digest="0" * 64,
        input_spec={},
        output={},
        labels=["ok", "defect"],
        reference_distribution={"confidence": confidences, "classes": classes},
    )


def test_drift_stays_quiet_on_a_fresh_sample_of_the_same_distribution(device: Device) -> None:
    reference()
    now = timezone.now()
    for seed in range(5):
        recent_windows(device, now, seed=seed)
        (result,) = drift.device_drift(now)
        assert result.level == "ok", (seed, result)


def test_darker_images_lower_confidence_and_drift_fires(device: Device) -> None:
    reference()
    now = timezone.now()
    recent_windows(device, now, confidence=(3, 2))  # mean confidence 0.75 -> 0.6
    (result,) = drift.device_drift(now)
    assert result.confidence_psi is not None and result.confidence_psi >= drift.ALERT
    assert result.level == "alert"


def test_a_changed_class_mix_drifts_even_with_the_same_confidence(device: Device) -> None:
    reference()
    now = timezone.now()
    recent_windows(device, now, weights=(0.6, 0.4))
    (result,) = drift.device_drift(now)
    assert result.class_psi is not None and result.class_psi >= drift.ALERT


def test_too_few_frames_give_no_verdict(device: Device) -> None:
    reference()
    now = timezone.now()
    recent_windows(device, now, frames=drift.MIN_FRAMES - 1, confidence=(1, 5))
    (result,) = drift.device_drift(now)
    assert result.level == "insufficient" and result.confidence_psi is None


def test_without_a_reference_the_versions_first_hours_in_the_field_are_the_baseline(
    device: Device, settings: Any
) -> None:
    settings.TELEMETRY_BASELINE_HOURS = 2
    now = timezone.now().replace(minute=30)
    first = (now - timedelta(hours=5)).replace(minute=0, second=0, microsecond=0)
    row = recent_windows(device, now, frames=5000)
    for hour in range(2):
        WindowRollup.objects.create(
            resolution=Resolution.HOUR,
            scope=Scope.FLEET,
            key="*",
            model_name="detector",
            model_version="1.0.0",
            bucket=first + timedelta(hours=hour),
            confidence=row.confidence,
            classes=row.classes,
            frames=row.frames,
        )
    recent_windows(device, now, confidence=(2, 3), seed=4)
    baseline = drift.baseline_for("detector", "1.0.0", now)
    assert baseline is not None and baseline.source == "field" and baseline.frames == 10_000
    assert baseline.until == first + timedelta(hours=2)
    (result,) = drift.device_drift(now)
    assert result.level == "alert"

"""zoo.faults: each release of the parts classifier differs from the committed one in exactly the way it says."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from zoo import faults, samples

pytestmark = pytest.mark.unit

MEAN = np.array([0.273, 0.275, 0.264], np.float32)
STD = np.array([0.188, 0.177, 0.167], np.float32)


@pytest.fixture(scope="module")
def crops() -> np.ndarray:
    """Rendered part crops, preprocessed as the classifier's metadata says (stretch to 96, scale, normalise)."""
    images = [s.image.convert("RGB").resize((96, 96)) for s in samples.reference_crops(count=12, seed=11)]
    pixels = np.stack([np.asarray(image, np.float32) / 255.0 for image in images])
    return ((pixels - MEAN) / STD).transpose(0, 3, 1, 2).astype(np.float32)


def run(model: bytes, crops: np.ndarray) -> np.ndarray:
    """Softmax probabilities, one row per crop."""
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    logits = np.concatenate([session.run(None, {"image": crop[None]})[0] for crop in crops])
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


@pytest.fixture(scope="module")
def production(crops: np.ndarray) -> np.ndarray:
    return run(faults.load().SerializeToString(), crops)


def test_the_good_release_is_new_bytes_with_the_same_answers(crops, production) -> None:
    release = faults.good("2.0.0")
    assert release != faults.load().SerializeToString() and release != faults.good("3.0.0")
    np.testing.assert_allclose(run(release, crops), production, atol=1e-6)


def test_an_unreproducible_release_answers_differently_each_run(crops) -> None:
    session = ort.InferenceSession(faults.unreproducible(), providers=["CPUExecutionProvider"])
    first, second = (session.run(None, {"image": crops[:1]})[0] for _ in range(2))
    assert not np.allclose(first, second, atol=1e-3)


def test_a_slow_release_answers_the_same_with_billions_of_extra_multiply_adds(crops, production) -> None:
    release = faults.slow(layers=4)
    np.testing.assert_allclose(run(release, crops), production, atol=1e-6)
    # Its cost, counted in the graph (how long it takes is measured where it matters: on the agents).
    model = onnx.load_from_string(release)
    weights = {init.name: init.dims for init in model.graph.initializer}
    convolutions = [
        weights[n.input[1]] for n in model.graph.node if n.op_type == "Conv" and n.input[1].startswith("slow_")
    ]
    assert len(convolutions) == 4
    multiply_adds = sum(out * inp * kh * kw * 96 * 96 for out, inp, kh, kw in convolutions)
    assert multiply_adds > 3e9


@pytest.mark.parametrize(
    ("build", "agreement", "confidence"),
    [
        (faults.unsure, lambda a: a == 1.0, lambda c, p: c < p - 0.25),
        (faults.mislabelled, lambda a: a == 0.0, lambda c, p: abs(c - p) < 1e-6),
        # Agrees only where production says ok too.
        (faults.blind, lambda a: a < 1.0, lambda c, p: c > 0.99),
    ],
    ids=["unsure", "mislabelled", "blind"],
)
def test_the_wrong_releases_change_answers_or_confidence_as_named(
    build: Callable[[], bytes],
    agreement: Callable[[float], bool],
    confidence: Callable[[float, float], bool],
    crops: np.ndarray,
    production: np.ndarray,
) -> None:
    answers = run(build(), crops)
    agreed = float(np.mean(answers.argmax(axis=1) == production.argmax(axis=1)))
    assert agreement(agreed), agreed
    if build is faults.blind:
        assert set(answers.argmax(axis=1)) == {0}
    assert confidence(float(answers.max(axis=1).mean()), float(production.max(axis=1).mean()))


def test_every_release_is_listed_and_a_blind_release_refuses_a_class_it_lacks() -> None:
    assert set(faults.RELEASES) == {"good", "unreproducible", "slow", "unsure", "mislabelled", "blind"}
    with pytest.raises(ValueError, match="class index"):
        faults.blind(label=4)

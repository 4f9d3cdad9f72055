"""The digits models: the committed ONNX files are the scikit-learn models they claim to be, and the cloud one
is the better judge."""

from __future__ import annotations

import hashlib
import json
from functools import cache

import numpy as np
import onnx
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.neural_network import MLPClassifier

import zoo
from agent.config import InferenceSettings
from agent.inference import ModelSession
from registry.metadata import parse_metadata
from zoo import digits

NAMES = (digits.EDGE, digits.CLOUD)


@cache
def _split() -> digits.Split:
    return digits.split()


@cache
def _trained() -> dict[str, LogisticRegression | MLPClassifier]:
    data = _split()
    return {digits.EDGE: digits.train_edge(data), digits.CLOUD: digits.train_cloud(data)}


def test_the_split_is_stratified_disjoint_and_the_same_every_time() -> None:
    first, second = digits.split(), digits.split()

    assert np.array_equal(first.test_frames, second.test_frames)
    assert len(first.train_labels) + len(first.test_labels) == 1797
    assert sorted(set(first.test_labels.tolist())) == list(range(10))
    train = {f.tobytes() for f in first.train_frames}
    assert not any(f.tobytes() in train for f in first.test_frames)
    assert first.test_frames.dtype == np.uint8 and first.test_frames.max() == 240


@pytest.mark.parametrize("name", NAMES)
def test_the_committed_model_reproduces_the_retrained_one_on_the_test_split(name: str) -> None:
    data = _split()
    weights = digits.layers(_trained()[name])

    onnx_logits = digits.onnx_logits(zoo.onnx_path(name), data.test_frames)
    reference = digits.logits(weights, data.test_features)

    assert onnx_logits.shape == (len(data.test_labels), 10)
    assert np.abs(onnx_logits - reference).max() < 1e-3
    assert np.array_equal(onnx_logits.argmax(axis=1), reference.argmax(axis=1))


def test_the_exported_weights_are_the_scikit_learn_models_predictions() -> None:
    data = _split()

    for model in _trained().values():
        assert np.array_equal(
            digits.logits(digits.layers(model), data.test_features).argmax(1), model.predict(data.test_features)
        )


def test_the_cloud_model_is_more_accurate_than_the_edge_model() -> None:
    data = _split()

    accuracy = {
        name: float((digits.onnx_logits(zoo.onnx_path(name), data.test_frames).argmax(1) == data.test_labels).mean())
        for name in NAMES
    }

    assert accuracy[digits.CLOUD] > accuracy[digits.EDGE] >= 0.9


@pytest.mark.parametrize("name", NAMES)
def test_the_metadata_is_publish_metadata_whose_figures_the_file_gives(name: str) -> None:
    meta = parse_metadata(zoo.metadata_path(name).read_bytes())
    data = _split()

    assert meta.labels == [str(d) for d in range(10)]
    assert meta.role == ("edge" if name == digits.EDGE else "cloud")
    session = ModelSession.from_metadata(zoo.metadata_path(name), settings=InferenceSettings(intra_op_threads=1))
    results = [session.infer(digits.bgr(frame)) for frame in data.test_frames]
    accuracy = float(np.mean([r.label == str(label) for r, label in zip(results, data.test_labels, strict=True)]))
    assert accuracy == pytest.approx(meta.metrics["accuracy_test"], abs=1e-5)
    assert meta.metrics["held_out_images"] == len(data.test_labels)
    assert meta.metrics["onnx_vs_sklearn_max_abs_diff"] < 1e-3


@pytest.mark.parametrize("name", NAMES)
def test_the_committed_files_are_small_and_listed_in_the_checksums(name: str) -> None:
    path = zoo.onnx_path(name)
    listed = dict(line.split("  ", 1)[::-1] for line in (zoo.ONNX_DIR / "SHA256SUMS").read_text().splitlines())

    assert listed[path.name] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert path.stat().st_size < 500_000
    model = onnx.load(str(path))
    assert {node.op_type for node in model.graph.node} <= {"Flatten", "MatMul", "Add", "Relu"}
    assert json.loads(zoo.metadata_path(name).read_text())["input"]["shape"] == [None, 1, 8, 8]

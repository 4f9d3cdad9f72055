"""The committed ONNX models: intact, described truthfully by their metadata, and as good as it says."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

import zoo
from agent.kernel.spec import InputSpec
from registry.metadata import PublishMetadata, parse_metadata
from tests.paths import FIXTURES
from zoo import evaluate, render

MODELS = zoo.HERE
NAMES = ("parts-classifier", "parts-detector", "cloud-classifier")


def _metadata(name: str) -> PublishMetadata:
    return parse_metadata((MODELS / f"{name}.json").read_bytes())


def _session(name: str) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(MODELS / "onnx" / f"{name}.onnx"), options, providers=["CPUExecutionProvider"])


def _classify(name: str, images: list[Image.Image]) -> np.ndarray:
    meta = _metadata(name)
    logits = _session(name).run([meta.output.output], {meta.input.name: evaluate.preprocess(images, meta.input)})[0]
    return evaluate.softmax(np.asarray(logits))


def _crops(seed: int, count: int, condition: render.Condition) -> tuple[list[Image.Image], np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.arange(count) % len(render.LABELS)
    images = [render.render_crop(rng, 128, label=render.LABELS[i], condition=condition).image for i in labels]
    return images, labels


def test_the_committed_models_match_their_checksums() -> None:
    listed = dict(reversed(line.split("  ", 1)) for line in (MODELS / "onnx" / "SHA256SUMS").read_text().splitlines())

    # Every committed model is listed: the parts models (zoo.train) and the digits models (zoo.digits).
    assert sorted(listed) == sorted(f"{name}.onnx" for name in (*NAMES, "digits-edge", "digits-cloud"))
    for file, digest in listed.items():
        assert hashlib.sha256((MODELS / "onnx" / file).read_bytes()).hexdigest() == digest, file


@pytest.mark.parametrize("name", NAMES)
def test_the_metadata_is_publish_metadata_that_matches_the_graph(name: str) -> None:
    meta = _metadata(name)
    document: dict[str, Any] = json.loads((MODELS / f"{name}.json").read_text())
    session = _session(name)

    assert InputSpec.model_validate(document["input"]) == meta.input
    (graph_input,) = session.get_inputs()
    assert graph_input.name == meta.input.name
    assert [d if isinstance(d, int) else None for d in graph_input.shape] == meta.input.shape
    assert [o.name for o in session.get_outputs()] == [meta.output.output]
    assert meta.metrics["train_images"] > 0
    assert meta.metrics["onnx_vs_torch_max_abs_diff"] < 1e-3
    assert (MODELS / "onnx" / f"{name}.onnx").stat().st_size < 5_000_000


def test_the_edge_classifier_sorts_fresh_renders_as_well_as_its_metadata_says() -> None:
    images, labels = _crops(2024, 48, "normal")

    accuracy = float((_classify("parts-classifier", images).argmax(1) == labels).mean())

    stated = _metadata("parts-classifier").metrics["accuracy_normal"]
    assert stated >= 0.9
    # 48 images: allow for sampling error around the figure measured on 800.
    assert accuracy >= stated - 0.1


def test_the_edge_classifier_is_less_sure_of_itself_on_dark_frames() -> None:
    normal, _ = _crops(2025, 32, "normal")
    dark, _ = _crops(2025, 32, "dark")

    confidence_normal = _classify("parts-classifier", normal).max(1).mean()
    confidence_dark = _classify("parts-classifier", dark).max(1).mean()

    assert confidence_dark < confidence_normal - 0.1


def test_the_cloud_classifier_is_the_better_judge_of_dark_frames() -> None:
    images, labels = _crops(2026, 48, "dark")

    edge = float((_classify("parts-classifier", images).argmax(1) == labels).mean())
    cloud = float((_classify("cloud-classifier", images).argmax(1) == labels).mean())

    assert cloud > edge


def test_the_committed_crops_are_classified_correctly() -> None:
    names = [f"crop-{label}.png" for label in render.LABELS]
    images = [Image.open(FIXTURES / "images" / n) for n in names]

    predicted = _classify("cloud-classifier", images).argmax(1)

    assert [render.LABELS[i] for i in predicted] == list(render.LABELS)


def test_the_detector_finds_the_parts_in_rendered_frames() -> None:
    meta = _metadata("parts-detector")
    assert meta.output.kind == "detection"
    rng = np.random.default_rng(2027)
    frames = [render.render_frame(rng, 256, 256) for _ in range(6)]

    batch = evaluate.preprocess([f.image for f in frames], meta.input)
    rows = _session("parts-detector").run(None, {meta.input.name: batch})[0]

    assert rows.shape == (6, 256, 5 + len(meta.labels))
    found = [evaluate.decode_yolo(r, meta.output.score_threshold, meta.output.iou_threshold) for r in rows]
    truths = [[(meta.labels.index(p.kind), p.box) for p in f.parts] for f in frames]
    scores = evaluate.average_precision(found, truths, len(meta.labels))
    assert scores["recall"] >= 0.8
    assert scores["precision"] >= 0.8


def test_decoding_refuses_output_of_the_wrong_shape() -> None:
    with pytest.raises(ValueError, match="expected rows"):
        evaluate.decode_yolo(np.zeros((10, 4), dtype=np.float32))

"""Post-processing: softmax and top-k for classifiers, YOLO decode and class-aware NMS for detectors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from agent.inference import ModelLoadError, ModelSession, choose_providers
from agent.kernel.decode import decode_classification, decode_detection, nms, softmax
from agent.kernel.preprocess import Geometry
from agent.kernel.spec import ClassificationOutput, InputSpec
from tests.agent.conftest import detection_output, make_colour_classifier, make_detector


def brute_force_nms(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, iou: float, limit: int) -> list[int]:
    def overlap(a: np.ndarray, b: np.ndarray) -> float:
        ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
        iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
        union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - ix * iy
        return ix * iy / union if union > 0 else 0.0

    kept: list[int] = []
    for i in sorted(range(len(boxes)), key=lambda i: (-scores[i], i)):
        if len(kept) == limit:
            break
        if all(classes[k] != classes[i] or overlap(boxes[k], boxes[i]) <= iou for k in kept):
            kept.append(i)
    return kept


@pytest.mark.parametrize("seed", range(20))
def test_nms_keeps_what_a_brute_force_greedy_nms_keeps(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 300))
    xy = rng.uniform(0, 200, size=(n, 2))
    wh = rng.uniform(2, 60, size=(n, 2))
    boxes = np.concatenate([xy, xy + wh], axis=1).astype(np.float32)
    scores = rng.uniform(0, 1, size=n).astype(np.float32)
    classes = rng.integers(0, 3, size=n)
    iou, limit = float(rng.choice([0.3, 0.45, 0.7])), int(rng.choice([5, 100]))

    kept = nms(boxes, scores, classes, iou, limit)

    assert kept.tolist() == brute_force_nms(boxes, scores, classes, iou, limit)


def test_nms_never_lets_one_class_suppress_another() -> None:
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 10]], dtype=np.float32)
    kept = nms(boxes, np.array([0.9, 0.8], dtype=np.float32), np.array([0, 1]), 0.5, 10)
    assert kept.tolist() == [0, 1]


def test_detection_boxes_come_back_in_frame_pixels_through_the_letterbox() -> None:
    # One box of class 1 at the centre of a 320x320 input, 100x50 input pixels.
    rows = np.array([[160, 160, 100, 50, 0.9, 0.1, 0.8]], dtype=np.float32)
    geometry = Geometry(scale_x=0.5, scale_y=0.5, pad_x=0, pad_y=40, frame_width=640, frame_height=480)

    result = decode_detection(rows[None], detection_output(), ["a", "b"], geometry)

    assert result.label == "b"
    assert result.confidence == pytest.approx(0.72)
    assert result.detections[0].box == pytest.approx((220.0, 190.0, 420.0, 290.0))


def test_a_frame_with_no_detection_is_a_confident_empty_answer() -> None:
    rows = np.array([[10, 10, 5, 5, 0.1, 0.9, 0.1]], dtype=np.float32)
    result = decode_detection(rows, detection_output(), ["a", "b"], Geometry(1, 1, 0, 0, 64, 64))
    assert (result.label, result.confidence, result.detections) == (None, 1.0, [])


def test_detector_rows_of_the_wrong_width_are_refused() -> None:
    with pytest.raises(ValueError, match="5 \\+ 3"):
        decode_detection(
            np.zeros((1, 4, 7), dtype=np.float32), detection_output(), ["a", "b", "c"], Geometry(1, 1, 0, 0, 1, 1)
        )


def test_classification_returns_the_top_k_classes_best_first() -> None:
    logits = np.array([[0.5, 3.0, -1.0, 2.0, 3.0]], dtype=np.float32)

    result = decode_classification(logits, ClassificationOutput(output="y", top_k=3), list("abcde"))

    probabilities = softmax(logits[0])
    assert [label for label, _ in result.top] == ["b", "e", "d"]  # a tie keeps the lower index first
    assert result.label == "b"
    assert result.confidence == pytest.approx(float(probabilities[1]))
    assert sum(softmax(logits[0])) == pytest.approx(1.0)


def test_classification_without_softmax_keeps_the_scores_as_they_are() -> None:
    result = decode_classification(
        np.array([0.2, 0.7, 0.1]), ClassificationOutput(output="y", softmax=False, top_k=1), ["a", "b", "c"]
    )
    assert result.top == [("b", pytest.approx(0.7))]


def test_a_classifier_whose_output_does_not_match_its_labels_is_refused() -> None:
    with pytest.raises(ValueError, match="3 scores for 2 labels"):
        decode_classification(np.zeros(3), ClassificationOutput(output="y"), ["a", "b"])


def test_providers_are_what_config_allows_and_the_machine_has_with_the_cpu_always_last() -> None:
    available = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert choose_providers(["cuda", "tensorrt"], available) == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert choose_providers([], available) == ["CPUExecutionProvider"]
    assert choose_providers(["openvino"], available) == ["CPUExecutionProvider"]
    with pytest.raises(ValueError, match="unknown execution provider"):
        choose_providers(["gpu"], available)


def test_a_real_session_decodes_a_detector_end_to_end(tmp_path: Path) -> None:
    rows = np.array([[32, 32, 16, 16, 0.9, 0.9, 0.1], [33, 33, 16, 16, 0.8, 0.9, 0.1]], dtype=np.float32)
    path = make_detector(tmp_path / "det.onnx", rows)
    session = ModelSession(path, InputSpec(name="image", shape=[1, 3, 64, 64]), detection_output(), ["part", "tool"])

    result = session.infer(np.zeros((128, 128, 3), dtype=np.uint8))

    assert [d.label for d in result.detections] == ["part"]  # the overlapping second box is suppressed
    assert result.detections[0].box == pytest.approx((48.0, 48.0, 80.0, 80.0))
    assert result.latency_ms > 0


def test_a_model_that_does_not_match_its_spec_is_refused_with_the_reason(tmp_path: Path) -> None:
    path = make_colour_classifier(tmp_path / "c.onnx", np.eye(3, dtype=np.float32))
    with pytest.raises(ModelLoadError, match="no input 'pixels'"):
        ModelSession(path, InputSpec(name="pixels", shape=[1, 3, 16, 16]), ClassificationOutput(output="logits"), "abc")
    with pytest.raises(ModelLoadError, match="no output 'scores'"):
        ModelSession(path, InputSpec(name="image", shape=[1, 3, 16, 16]), ClassificationOutput(output="scores"), "abc")
    (tmp_path / "broken.onnx").write_bytes(b"not a model")
    with pytest.raises(ModelLoadError, match="cannot load"):
        ModelSession(
            tmp_path / "broken.onnx",
            InputSpec(name="image", shape=[1, 3, 16, 16]),
            ClassificationOutput(output="x"),
            "a",
        )

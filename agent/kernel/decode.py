"""Post-processing: a model's raw output into a ``Result``.

Classifiers: optional softmax, then top-k. YOLO-style detectors: vectorised
decode and class-aware NMS, boxes mapped back to frame pixels through the
pre-processing ``Geometry``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from agent.kernel.preprocess import FloatArray, Geometry
from agent.kernel.spec import ClassificationOutput, DetectionOutput


@dataclass(frozen=True)
class Detection:
    label: str
    class_id: int
    score: float
    box: tuple[float, float, float, float]
    """x1, y1, x2, y2 in frame pixels."""


@dataclass
class Result:
    """What the model decided about one frame."""

    label: str | None
    """The top class, or the best detection's class; None when nothing was detected."""
    confidence: float
    """The top-1 probability for a classifier; for a detector the least confident kept box
    (the decision most worth a second look), 1.0 when nothing crossed the score threshold."""
    top: list[tuple[str, float]] = field(default_factory=list)
    detections: list[Detection] = field(default_factory=list)
    latency_ms: float = 0.0
    model_name: str | None = None
    model_version: str | None = None
    frame_index: int = 0
    ts: float = 0.0

    def labels(self) -> list[str]:
        """The classes this frame counts for: the top class, or every detection's."""
        if self.detections:
            return [d.label for d in self.detections]
        return [self.label] if self.label is not None else []

    def to_json(self) -> dict[str, Any]:
        document: dict[str, Any] = {
            "label": self.label,
            "confidence": round(self.confidence, 6),
            "latency_ms": round(self.latency_ms, 3),
            "model_name": self.model_name,
            "model_version": self.model_version,
            "frame_index": self.frame_index,
            "ts": self.ts,
        }
        if self.top:
            document["top"] = [[label, round(score, 6)] for label, score in self.top]
        if self.detections:
            document["detections"] = [
                {"label": d.label, "score": round(d.score, 6), "box": [round(v, 2) for v in d.box]}
                for d in self.detections
            ]
        return document


def softmax(logits: npt.NDArray[Any]) -> FloatArray:
    shifted = logits.astype(np.float32) - np.max(logits, axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return np.asarray(exp / np.sum(exp, axis=-1, keepdims=True), dtype=np.float32)


def top_k(scores: npt.NDArray[Any], k: int) -> tuple[npt.NDArray[np.intp], FloatArray]:
    """Indices and scores of the ``k`` best classes, best first (ties: lower index first)."""
    k = min(k, scores.shape[-1])
    if k < scores.shape[-1]:
        candidates = np.argpartition(-scores, k - 1)[:k]
    else:
        candidates = np.arange(scores.shape[-1])
    order = candidates[np.lexsort((candidates, -scores[candidates]))]
    return order, np.asarray(scores[order], dtype=np.float32)


def decode_classification(output: npt.NDArray[Any], decoding: ClassificationOutput, labels: Sequence[str]) -> Result:
    scores = np.asarray(output, dtype=np.float32).reshape(-1)
    if scores.size != len(labels):
        raise ValueError(f"classifier output has {scores.size} scores for {len(labels)} labels")
    if decoding.softmax:
        scores = softmax(scores)
    indices, best = top_k(scores, decoding.top_k)
    top = [(labels[int(i)], float(s)) for i, s in zip(indices, best, strict=True)]
    return Result(label=top[0][0], confidence=top[0][1], top=top)


def box_iou(box: FloatArray, boxes: FloatArray) -> FloatArray:
    """IoU of one x1y1x2y2 box against many."""
    x1 = np.maximum(box[0], boxes[:, 0])
    y1 = np.maximum(box[1], boxes[:, 1])
    x2 = np.minimum(box[2], boxes[:, 2])
    y2 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    union = area + areas - inter
    return np.asarray(np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0), dtype=np.float32)


def nms(
    boxes: FloatArray, scores: FloatArray, classes: npt.NDArray[np.intp], iou_threshold: float, limit: int
) -> npt.NDArray[np.intp]:
    """Greedy class-aware NMS; indices of the kept boxes, best score first.

    Boxes of different classes never suppress each other: each class is
    shifted to its own region of the plane (an offset larger than any
    coordinate), so one IoU pass serves every class. The loop runs once per
    kept box (at most ``limit``), each pass vectorised over the remaining ones.
    """
    if len(boxes) == 0:
        return np.zeros(0, dtype=np.intp)
    offset = (float(np.max(np.abs(boxes))) * 2 + 1) * classes.astype(np.float32)
    shifted = boxes + offset[:, None]
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    while order.size and len(keep) < limit:
        best = int(order[0])
        keep.append(best)
        rest = order[1:]
        order = rest[box_iou(shifted[best], shifted[rest]) <= iou_threshold]
    return np.asarray(keep, dtype=np.intp)


def decode_detection(
    output: npt.NDArray[Any], decoding: DetectionOutput, labels: Sequence[str], geometry: Geometry
) -> Result:
    rows = np.asarray(output, dtype=np.float32)
    rows = rows.reshape(-1, rows.shape[-1])
    if rows.shape[1] != 5 + len(labels):
        raise ValueError(f"detector rows have {rows.shape[1]} values; expected 5 + {len(labels)} classes")
    class_scores = rows[:, 5:]
    classes = np.argmax(class_scores, axis=1)
    scores = rows[:, 4] * class_scores[np.arange(len(rows)), classes]
    candidates = np.flatnonzero(scores >= decoding.score_threshold)
    # Keep NMS quadratic in something small on a noisy frame.
    if candidates.size > 30 * decoding.max_detections:
        best = np.argpartition(-scores[candidates], 30 * decoding.max_detections)[: 30 * decoding.max_detections]
        candidates = candidates[best]
    cx, cy, w, h = (rows[candidates, i] for i in range(4))
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
    kept = nms(boxes, scores[candidates], classes[candidates], decoding.iou_threshold, decoding.max_detections)
    boxes = boxes[kept]
    # Back from input pixels to frame pixels through the preprocessor's own Geometry: undo the
    # padding, then the resize's exact per-axis ratio. (Ultralytics' scale_boxes divides by the
    # unrounded ratio instead; the two differ by less than a pixel.)
    boxes[:, [0, 2]] = np.clip((boxes[:, [0, 2]] - geometry.pad_x) / geometry.scale_x, 0, geometry.frame_width)
    boxes[:, [1, 3]] = np.clip((boxes[:, [1, 3]] - geometry.pad_y) / geometry.scale_y, 0, geometry.frame_height)
    kept_scores = scores[candidates][kept]
    kept_classes = classes[candidates][kept]
    detections = [
        Detection(labels[int(c)], int(c), float(s), (float(b[0]), float(b[1]), float(b[2]), float(b[3])))
        for b, s, c in zip(boxes, kept_scores, kept_classes, strict=True)
    ]
    if not detections:
        return Result(label=None, confidence=1.0)
    return Result(label=detections[0].label, confidence=float(np.min(kept_scores)), detections=detections)

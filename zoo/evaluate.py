"""Feeding the project's ONNX models and scoring their answers, with numpy and Pillow only.

Used by `zoo.train` to measure the exported files (the metrics in
`zoo/<name>.json` are those of the ONNX graphs, not of the torch modules),
and by the tests. Pre-processing follows `agent.kernel.spec.InputSpec` to the letter:
resize, then ``(pixel * scale - mean) / std`` per channel, NCHW.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from agent.kernel.spec import InputSpec


def preprocess(images: Sequence[Image.Image], spec: InputSpec) -> np.ndarray:
    """A float32 batch in the layout ``spec`` describes."""
    if spec.resize != "stretch" or spec.dtype != "float32" or spec.colour != "RGB":
        raise ValueError("these models take stretched float32 RGB input")
    height, width = spec.height, spec.width
    if height is None or width is None:
        raise ValueError("the input spec must fix the height and width")
    mean = np.array(spec.mean, dtype=np.float32)
    std = np.array(spec.std, dtype=np.float32)
    batch = []
    for image in images:
        resized = image.convert("RGB").resize((width, height), Image.Resampling.BILINEAR)
        pixels = np.asarray(resized, dtype=np.float32) * np.float32(spec.scale)
        batch.append((pixels - mean) / std)
    array = np.stack(batch).astype(np.float32)
    return array.transpose(0, 3, 1, 2).copy() if spec.layout == "NCHW" else array


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return np.asarray(exp / exp.sum(axis=-1, keepdims=True))


@dataclass(frozen=True)
class Detection:
    box: tuple[float, float, float, float]
    """x0, y0, x1, y1 in input pixels."""
    score: float
    label: int


def iou(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def decode_yolo(
    rows: np.ndarray, score_threshold: float = 0.25, iou_threshold: float = 0.45, max_detections: int = 100
) -> list[Detection]:
    """Decode one image's (boxes, 5 + classes) rows as `agent.kernel.spec.DetectionOutput` does, with per-class NMS."""
    if rows.ndim != 2 or rows.shape[1] < 6:
        raise ValueError(f"expected rows of cx, cy, w, h, objectness and class scores, got shape {rows.shape}")
    labels = rows[:, 5:].argmax(axis=1)
    scores = rows[:, 4] * rows[np.arange(len(rows)), 5 + labels]
    keep = np.flatnonzero(scores >= score_threshold)
    keep = keep[np.argsort(-scores[keep], kind="stable")]
    chosen: list[Detection] = []
    for i in keep:
        cx, cy, w, h = (float(v) for v in rows[i, :4])
        box = (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
        label = int(labels[i])
        if any(d.label == label and iou(d.box, box) > iou_threshold for d in chosen):
            continue
        chosen.append(Detection(box=box, score=float(scores[i]), label=label))
        if len(chosen) == max_detections:
            break
    return chosen


def average_precision(
    detections: Sequence[Sequence[Detection]],
    truths: Sequence[Sequence[tuple[int, tuple[float, float, float, float]]]],
    classes: int,
    iou_threshold: float = 0.5,
) -> dict[str, float]:
    """mAP at ``iou_threshold`` (all-point interpolation) plus precision and recall of the given detections."""
    aps = []
    true_positives = 0
    for label in range(classes):
        scored: list[tuple[float, bool]] = []
        positives = 0
        for dets, gts in zip(detections, truths, strict=True):
            boxes = [box for gl, box in gts if gl == label]
            positives += len(boxes)
            used = [False] * len(boxes)
            for det in sorted((d for d in dets if d.label == label), key=lambda d: -d.score):
                best, best_iou = -1, iou_threshold
                for j, box in enumerate(boxes):
                    overlap = iou(det.box, box)
                    if not used[j] and overlap >= best_iou:
                        best, best_iou = j, overlap
                if best >= 0:
                    used[best] = True
                scored.append((det.score, best >= 0))
        true_positives += sum(hit for _, hit in scored)
        if positives == 0:
            continue
        scored.sort(key=lambda item: -item[0])
        hits = np.array([hit for _, hit in scored], dtype=np.float64)
        tp = np.cumsum(hits)
        fp = np.cumsum(1.0 - hits)
        recall = tp / positives
        precision = tp / np.maximum(tp + fp, 1e-9)
        r = np.concatenate([[0.0], recall, [1.0]])
        p = np.concatenate([[0.0], precision, [0.0]])
        for i in range(len(p) - 2, -1, -1):
            p[i] = max(p[i], p[i + 1])
        aps.append(float(np.sum((r[1:] - r[:-1]) * p[1:])))
    total_dets = sum(len(d) for d in detections)
    total_truths = sum(len(t) for t in truths)
    return {
        "map50": float(np.mean(aps)) if aps else 0.0,
        "precision": true_positives / total_dets if total_dets else 0.0,
        "recall": true_positives / total_truths if total_truths else 0.0,
    }

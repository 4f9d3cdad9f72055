"""Inference: an onnxruntime session fed and read the way the model's spec says.

Pre-processing resizes the ``uint8`` frame before anything becomes float: a
1080p frame converted first costs about 18 times more than resizing first
(DESIGN.md, "Costs here"). Post-processing decodes classifiers (softmax,
top-k) and YOLO-style detectors (vectorised decode and class-aware NMS,
boxes mapped back to frame pixels). ``SessionHolder`` lets the updater swap
the model between two frames.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import cv2
import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field

from agent.spec import ClassificationOutput, DetectionOutput, InputSpec, Thresholds

log = logging.getLogger(__name__)

Image = npt.NDArray[np.uint8]
FloatArray = npt.NDArray[np.float32]

# Execution providers by short name, in the order we prefer them when allowed.
PROVIDERS: dict[str, str] = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "cpu": "CPUExecutionProvider",
}
LETTERBOX_FILL = 114  # the grey YOLO models are trained with


class ModelLoadError(RuntimeError):
    """A model file that cannot be loaded or does not match its spec."""


class InferenceSettings(BaseModel):
    """The ``[inference]`` section of the agent config."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    providers: list[Literal["tensorrt", "cuda", "openvino", "cpu"]] = ["cpu"]
    """Execution providers the device may use; the CPU is always used last, allowed or not."""
    intra_op_threads: int = Field(default=0, ge=0, le=256)
    """Threads for one operator; 0 lets onnxruntime use every core."""
    inter_op_threads: int = Field(default=1, ge=0, le=256)


def choose_providers(allowed: Sequence[str], available: Sequence[str]) -> list[str]:
    """The execution providers to ask for: allowed by config, present here, CPU always last."""
    unknown = [name for name in allowed if name not in PROVIDERS]
    if unknown:
        raise ValueError(f"unknown execution provider(s) {unknown}; known: {', '.join(PROVIDERS)}")
    chosen = [PROVIDERS[name] for name in PROVIDERS if name in allowed and name != "cpu"]
    return [p for p in chosen if p in available] + [PROVIDERS["cpu"]]


# --- pre-processing ---------------------------------------------------------


@dataclass(frozen=True)
class Geometry:
    """How input-tensor pixels map back to frame pixels: ``frame = (input - pad) / scale``."""

    scale_x: float
    scale_y: float
    pad_x: float
    pad_y: float
    frame_width: int
    frame_height: int


class Preprocessor:
    """Turns a BGR ``uint8`` frame into the model's input tensor.

    Order: resize (on ``uint8``, letterboxed or stretched), colour conversion
    (on the small image), then one fused multiply-add per channel straight
    into the float tensor in the model's layout: ``pixel * (scale / std) -
    mean / std``, which equals ``(pixel * scale - mean) / std``.
    """

    def __init__(self, spec: InputSpec) -> None:
        self.spec = spec
        channels = 1 if spec.colour == "GRAY" else 3
        self.channels = channels
        mean = np.broadcast_to(np.asarray(spec.mean, dtype=np.float64), (channels,))
        std = np.broadcast_to(np.asarray(spec.std, dtype=np.float64), (channels,))
        self._gain = (spec.scale / std).astype(np.float32)
        self._offset = (-mean / std).astype(np.float32)

    def target_size(self, frame_height: int, frame_width: int) -> tuple[int, int]:
        """(height, width) of the input; a dynamic dimension takes the frame's."""
        return self.spec.height or frame_height, self.spec.width or frame_width

    def resize(self, frame: Image) -> tuple[Image, Geometry]:
        """The frame resized to the input size, still ``uint8`` and BGR."""
        frame_h, frame_w = frame.shape[:2]
        height, width = self.target_size(frame_h, frame_w)
        if self.spec.resize == "letterbox":
            ratio = min(width / frame_w, height / frame_h)
            new_w, new_h = max(1, round(frame_w * ratio)), max(1, round(frame_h * ratio))
            pad_x, pad_y = (width - new_w) // 2, (height - new_h) // 2
            inner = frame if (new_w, new_h) == (frame_w, frame_h) else _resize(frame, new_w, new_h)
            resized = cv2.copyMakeBorder(
                inner,
                pad_y,
                height - new_h - pad_y,
                pad_x,
                width - new_w - pad_x,
                cv2.BORDER_CONSTANT,
                value=(LETTERBOX_FILL,) * 3,
            )
            geometry = Geometry(new_w / frame_w, new_h / frame_h, pad_x, pad_y, frame_w, frame_h)
        else:
            resized = frame if (width, height) == (frame_w, frame_h) else _resize(frame, width, height)
            geometry = Geometry(width / frame_w, height / frame_h, 0.0, 0.0, frame_w, frame_h)
        return np.asarray(resized, dtype=np.uint8), geometry

    def __call__(self, frame: Image) -> tuple[npt.NDArray[Any], Geometry]:
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise ValueError(f"expected a BGR uint8 frame of shape (H, W, 3), got {frame.dtype} {frame.shape}")
        resized, geometry = self.resize(frame)
        spec = self.spec
        if spec.colour == "RGB":
            pixels = cv2.cvtColor(resized, cv2.COLOR_BGR2RGB)
        elif spec.colour == "GRAY":
            pixels = cv2.cvtColor(resized, cv2.COLOR_BGR2GRAY)[:, :, None]
        else:
            pixels = resized
        height, width = pixels.shape[:2]
        if spec.dtype == "uint8":
            tensor_u8 = pixels.transpose(2, 0, 1) if spec.layout == "NCHW" else pixels
            return np.ascontiguousarray(tensor_u8[None]), geometry
        if spec.layout == "NCHW":
            tensor = np.empty((1, self.channels, height, width), dtype=np.float32)
            for c in range(self.channels):
                np.multiply(pixels[:, :, c], self._gain[c], out=tensor[0, c], casting="unsafe")
                tensor[0, c] += self._offset[c]
        else:
            tensor = np.empty((1, height, width, self.channels), dtype=np.float32)
            np.multiply(pixels, self._gain, out=tensor[0], casting="unsafe")
            tensor[0] += self._offset
        return tensor, geometry


def _resize(image: Image, width: int, height: int) -> Image:
    # Bilinear, as YOLO-style pipelines do: INTER_AREA filters better when shrinking a lot
    # but costs 5-40x more here (3.8 ms vs 0.36 ms for 640x480 -> 224x224), more than the
    # whole budget the agent may add to a MobileNet-class model.
    return np.asarray(cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR), dtype=np.uint8)


# --- results ----------------------------------------------------------------


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


# --- post-processing --------------------------------------------------------


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
    # Back from input pixels to frame pixels: undo the letterbox padding, then the scale.
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


# --- the session ------------------------------------------------------------


class ModelSession:
    """A loaded model: its onnxruntime session, pre-processing and decoding."""

    def __init__(
        self,
        model_path: Path,
        input_spec: InputSpec,
        output: ClassificationOutput | DetectionOutput,
        labels: Sequence[str],
        *,
        name: str | None = None,
        version: str | None = None,
        thresholds: Thresholds | None = None,
        settings: InferenceSettings | None = None,
    ) -> None:
        import onnxruntime as ort

        settings = settings or InferenceSettings()
        self.name = name or model_path.stem
        self.version = version
        self.input_spec = input_spec
        self.output = output
        self.labels = list(labels)
        self.thresholds = thresholds or Thresholds()
        self.preprocess = Preprocessor(input_spec)
        options = ort.SessionOptions()
        options.intra_op_num_threads = settings.intra_op_threads
        options.inter_op_num_threads = settings.inter_op_threads
        self.providers = choose_providers(settings.providers, ort.get_available_providers())
        try:
            self.session: Any = ort.InferenceSession(str(model_path), options, providers=self.providers)
        except Exception as exc:  # onnxruntime raises its own untyped errors for any bad file
            raise ModelLoadError(f"{model_path}: cannot load: {exc}"[:500]) from exc
        inputs = {i.name: i for i in self.session.get_inputs()}
        outputs = {o.name for o in self.session.get_outputs()}
        if input_spec.name not in inputs:
            raise ModelLoadError(f"{model_path}: no input {input_spec.name!r} (has {sorted(inputs)})")
        if output.output not in outputs:
            raise ModelLoadError(f"{model_path}: no output {output.output!r} (has {sorted(outputs)})")
        expected = "tensor(float)" if input_spec.dtype == "float32" else "tensor(uint8)"
        if inputs[input_spec.name].type != expected:
            raise ModelLoadError(f"{model_path}: input is {inputs[input_spec.name].type}, spec says {expected}")

    @classmethod
    def from_bundle(cls, directory: Path, *, settings: InferenceSettings | None = None) -> ModelSession:
        """Load an unpacked, already verified bundle directory (``manifest.json`` + ``model.onnx``)."""
        from agent.manifest import MANIFEST_NAME, MODEL_NAME, parse_manifest

        manifest = parse_manifest((directory / MANIFEST_NAME).read_bytes())
        return cls(
            directory / MODEL_NAME,
            manifest.input,
            manifest.output,
            manifest.labels,
            name=manifest.model,
            version=manifest.version,
            thresholds=manifest.thresholds,
            settings=settings,
        )

    @classmethod
    def from_metadata(cls, path: Path, *, settings: InferenceSettings | None = None) -> ModelSession:
        """Load a model described by a metadata JSON (``models/<name>.json``: input, output, labels,
        thresholds, and the model at ``file`` or else ``onnx/<name>.onnx`` beside it), or a ``.onnx``
        with such a JSON beside it or one folder up."""
        from pydantic import TypeAdapter, ValidationError

        from agent.spec import OutputDecoding

        meta_path = path.with_suffix(".json") if path.suffix == ".onnx" else path
        if path.suffix == ".onnx" and not meta_path.exists():
            meta_path = path.parent.parent / f"{path.stem}.json"  # models/onnx/x.onnx -> models/x.json
        try:
            document = json.loads(meta_path.read_bytes())
            # models/<name>.json describes models/onnx/<name>.onnx unless it names its file.
            default_file = f"onnx/{meta_path.stem}.onnx"
            model_file = path if path.suffix == ".onnx" else meta_path.parent / str(document.get("file", default_file))
            return cls(
                model_file,
                InputSpec.model_validate(document["input"]),
                TypeAdapter(OutputDecoding).validate_python(document["output"]),
                [str(label) for label in document["labels"]],
                name=str(document.get("name") or meta_path.stem),
                version=document.get("version"),
                thresholds=Thresholds.model_validate(document.get("thresholds") or {}),
                settings=settings,
            )
        except (OSError, ValueError, KeyError, TypeError, ValidationError) as exc:
            raise ModelLoadError(f"{meta_path}: not usable model metadata: {exc}"[:500]) from None

    def run(self, tensor: npt.NDArray[Any]) -> npt.NDArray[Any]:
        """The bare ``session.run`` on a ready tensor: the decoded output only."""
        return np.asarray(self.session.run([self.output.output], {self.input_spec.name: tensor})[0])

    def infer(self, frame: Image) -> Result:
        """Pre-process, run and decode one BGR frame; ``latency_ms`` covers all three."""
        start = time.perf_counter()
        tensor, geometry = self.preprocess(frame)
        raw = self.run(tensor)
        if isinstance(self.output, ClassificationOutput):
            result = decode_classification(raw, self.output, self.labels)
        else:
            result = decode_detection(raw, self.output, self.labels, geometry)
        result.latency_ms = (time.perf_counter() - start) * 1000.0
        result.model_name = self.name
        result.model_version = self.version
        return result


class Inferer(Protocol):
    """What the pipeline needs of a model; ``ModelSession`` is the real one, tests bring fakes."""

    name: str
    version: str | None

    def infer(self, frame: Image) -> Result: ...


class SessionHolder:
    """The model in service, swappable between two frames.

    ``infer`` reads the current session once per frame, so a ``swap`` from
    another thread (the updater) takes effect at the next frame: the frame in
    flight finishes on the old model, none is lost, and inference pauses for
    no longer than that one frame. The old session is returned to the caller,
    who may keep it for a rollback.
    """

    def __init__(self, session: Inferer, *, fallback: bool = False) -> None:
        self._session = session
        self._fallback = fallback
        self._lock = threading.Lock()
        self.swaps = 0

    @property
    def session(self) -> Inferer:
        return self._session

    @property
    def fallback(self) -> bool:
        """True while the fallback model serves (degraded mode, reported in every window)."""
        return self._fallback

    def swap(self, session: Inferer, *, fallback: bool = False) -> Inferer:
        with self._lock:
            old, self._session, self._fallback = self._session, session, fallback
            self.swaps += 1
        log.info("model swapped to %s %s%s", session.name, session.version, " (fallback)" if fallback else "")
        return old

    def infer(self, frame: Image) -> Result:
        session = self._session  # one read per frame: a swap lands between frames
        return session.infer(frame)

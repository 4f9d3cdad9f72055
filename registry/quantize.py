"""The INT8 variant: onnxruntime static quantisation, calibrated on the version's reference inputs."""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

from agent.kernel.decode import box_iou, decode_detection
from agent.kernel.preprocess import Geometry
from agent.kernel.spec import DetectionOutput, InputSpec, OutputDecoding
from registry import inspection


class _Reader(CalibrationDataReader):
    def __init__(self, name: str, tensors: Sequence[np.ndarray]) -> None:
        self._items = iter([{name: t} for t in tensors])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._items, None)


@dataclass(frozen=True)
class Int8Result:
    model: bytes
    outputs: list[list[np.ndarray]]
    metrics: dict[str, Any]


def quantize(
    model: bytes,
    spec: InputSpec,
    references: Sequence[np.ndarray],
    calibration: Sequence[np.ndarray] = (),
    *,
    output: OutputDecoding,
    labels: list[str],
) -> Int8Result:
    """Quantise ``model``, calibrated on the reference and calibration tensors, and measure it against fp32.

    The metrics compare like with like in one process, on every calibration
    and reference input: size in bytes, median latency ratio int8/fp32 (one
    thread each, same inputs), and top-1 agreement (for a detector: the class
    of the most confident box, and the share of fp32 detections int8 finds
    too, same class at IoU >= 0.5). ``outputs`` are int8's on the references.
    """
    detection = isinstance(output, DetectionOutput)
    tensors = [*references, *calibration]
    with tempfile.TemporaryDirectory(prefix="edgefleet-quant-") as tmp:
        source, target = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        source.write_bytes(model)
        try:
            quantize_static(
                str(source),
                str(target),
                _Reader(spec.name, tensors),
                quant_format=QuantFormat.QDQ,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                per_channel=True,
            )
        except Exception as exc:  # the quantiser raises plain Exceptions for unsupported graphs
            detail = str(exc)[:300]
            raise inspection.PublishError("quantization_failed", f"INT8 quantisation failed: {detail}") from None
        int8 = target.read_bytes()
    fp32_session = inspection.load_session(model)
    int8_session = inspection.load_session(int8)
    fp32_outputs = inspection.run(fp32_session, spec, tensors)
    int8_outputs = inspection.run(int8_session, spec, tensors)
    timed = tensors[:16]
    pairs = list(zip(fp32_outputs, int8_outputs, strict=True))
    agreement = float(np.mean([inspection.top1(a, detection) == inspection.top1(b, detection) for a, b in pairs]))
    rounds = max(3, 48 // len(timed))
    fp32_ms = inspection.latency_ms(fp32_session, spec, timed, rounds)
    int8_ms = inspection.latency_ms(int8_session, spec, timed, rounds)
    max_abs = float(max(np.max(np.abs(a[0] - b[0])) for a, b in pairs))
    metrics: dict[str, Any] = {
        "size_bytes": len(int8),
        "fp32_size_bytes": len(model),
        "size_ratio": round(len(int8) / len(model), 4),
        "fp32_latency_ms": round(fp32_ms, 3),
        "int8_latency_ms": round(int8_ms, 3),
        "latency_ratio": round(int8_ms / fp32_ms, 4) if fp32_ms > 0 else None,
        "top1_agreement": round(agreement, 4),
        "max_abs_output_delta": round(max_abs, 6),
        "reference_count": len(references),
        "measured_on": len(tensors),
        "method": "onnxruntime quantize_static QDQ, per-channel int8 weights, uint8 activations",
    }
    if isinstance(output, DetectionOutput):
        metrics.update(detection_agreement(pairs, output, labels))
    return Int8Result(int8, int8_outputs[: len(references)], metrics)


def detection_agreement(
    pairs: list[tuple[list[np.ndarray], list[np.ndarray]]], output: DetectionOutput, labels: list[str]
) -> dict[str, Any]:
    """How many of the fp32 model's detections the int8 model also makes (same class, IoU >= 0.5)."""
    found = matched = 0
    for fp32, int8 in pairs:
        geometry = Geometry(1.0, 1.0, 0.0, 0.0, 10**6, 10**6)  # stay in input pixels; nothing to clip
        reference = decode_detection(fp32[0], output, labels, geometry).detections
        candidate = decode_detection(int8[0], output, labels, geometry).detections
        found += len(reference)
        for det in reference:
            same = [d.box for d in candidate if d.class_id == det.class_id]
            if same and float(np.max(box_iou(np.asarray(det.box), np.asarray(same)))) >= 0.5:
                matched += 1
    return {
        "fp32_detections": found,
        "detection_agreement": round(matched / found, 4) if found else None,
    }

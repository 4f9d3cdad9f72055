"""What the server learns from an uploaded ONNX file before it signs anything.

It loads the graph with onnxruntime, checks the declared input and output
against it, pre-processes the reference images per the input spec (or makes
deterministic inputs when none were given), and records the outputs a device
must reproduce. Django-free; every refusal is a ``PublishError``.
"""

from __future__ import annotations

import io
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import onnxruntime as ort
from PIL import Image, UnidentifiedImageError

from agent.kernel.preprocess import Preprocessor
from agent.kernel.spec import ClassificationOutput, DetectionOutput, InputSpec
from core.errors import ServiceError

_DTYPES = {"float32": "tensor(float)", "uint8": "tensor(uint8)"}
DEFAULT_SIDE = 224


class PublishError(ServiceError):
    """A publish request the server refuses: ``PublishError(code, detail, status=400)``."""


def load_session(model: bytes | str, *, threads: int = 1) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(model, sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises untyped errors (Fail, InvalidGraph, InvalidProtobuf, ...)
        detail = str(exc)[:300]
        raise PublishError("not_onnx", f"The file is not an ONNX model onnxruntime can load: {detail}") from None


def _dims(shape: Sequence[Any]) -> list[int | None]:
    return [d if isinstance(d, int) and d > 0 else None for d in shape]


def check_graph(
    session: ort.InferenceSession, spec: InputSpec, output: ClassificationOutput | DetectionOutput, labels: list[str]
) -> None:
    """Refuse metadata that does not describe the graph (raises PublishError ``shape_mismatch``)."""
    inputs = {i.name: i for i in session.get_inputs()}
    if len(inputs) != 1:
        raise PublishError("shape_mismatch", f"The model has {len(inputs)} inputs; one image input is supported.")
    graph_input = inputs.get(spec.name)
    if graph_input is None:
        actual = next(iter(inputs))
        raise PublishError("shape_mismatch", f"Declared input {spec.name!r}; the graph's input is {actual!r}.")
    graph_shape = _dims(graph_input.shape)
    if len(graph_shape) != 4:
        raise PublishError("shape_mismatch", f"The graph input has rank {len(graph_shape)}; an image input has 4.")
    for axis, (declared, actual) in enumerate(zip(spec.shape, graph_shape, strict=True)):
        if declared is not None and actual is not None and declared != actual:
            raise PublishError(
                "shape_mismatch",
                f"Declared input shape {spec.shape} does not match the graph's {graph_shape} (axis {axis}).",
            )
    graph_width = graph_shape[3] if spec.layout == "NCHW" else graph_shape[2]
    if spec.resize == "fit_height" and spec.width is None and graph_width is not None:
        # A dynamic width would make tensors narrower than the graph takes: refused here, not at inference.
        raise PublishError(
            "shape_mismatch",
            f"The graph's width axis is fixed at {graph_width}; declare that width in the shape "
            "(fit_height then pads to it) instead of a dynamic width with max_width.",
        )
    if graph_input.type != _DTYPES[spec.dtype]:
        raise PublishError("shape_mismatch", f"Declared dtype {spec.dtype}; the graph input is {graph_input.type}.")
    outputs = {o.name: o for o in session.get_outputs()}
    graph_output = outputs.get(output.output)
    if graph_output is None:
        raise PublishError(
            "shape_mismatch", f"Declared output {output.output!r}; the graph has {', '.join(sorted(outputs))}."
        )
    out_shape = _dims(graph_output.shape)
    if isinstance(output, ClassificationOutput):
        rank, width, what = 2, len(labels), f"{len(labels)} labels"
    else:
        rank, width, what = 3, 5 + len(labels), f"5 + {len(labels)} labels"
    if len(out_shape) != rank:
        raise PublishError("shape_mismatch", f"Output {output.output!r} has rank {len(out_shape)}; {rank} expected.")
    if out_shape[-1] is not None and out_shape[-1] != width:
        raise PublishError(
            "shape_mismatch", f"Output {output.output!r} has {out_shape[-1]} values per row; {what} make {width}."
        )


def input_size(spec: InputSpec) -> tuple[int, int]:
    """The size of generated inputs: the input's, its max width for a dynamic fit_height width."""
    return spec.height or DEFAULT_SIDE, spec.width or spec.max_width or DEFAULT_SIDE


def preprocess(image: bytes, spec: InputSpec) -> np.ndarray:
    """An encoded image as the model's input tensor, batch of one.

    The pixels go through the agent's own ``Preprocessor``, so the reference
    tensors in a bundle are exactly what a device makes of the same picture.
    """
    try:
        picture = Image.open(io.BytesIO(image))
        picture.load()
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
        raise PublishError("bad_image", f"A reference image cannot be read: {exc}") from None
    bgr = np.ascontiguousarray(np.asarray(picture.convert("RGB"), dtype=np.uint8)[:, :, ::-1])
    tensor, _ = Preprocessor(spec)(bgr)
    return tensor


def generated_inputs(spec: InputSpec, count: int, seed: int = 0) -> list[np.ndarray]:
    """Deterministic smooth pseudo-images for a model published without reference images."""
    rng = np.random.default_rng(seed)
    height, width = input_size(spec)
    tensors = []
    for _ in range(count):
        # Low-frequency noise upsampled: closer to real pictures than white noise,
        # so a quantised model is calibrated on a plausible range.
        coarse = rng.integers(0, 256, size=(max(1, height // 16), max(1, width // 16), 3), dtype=np.uint8)
        picture = Image.fromarray(coarse).resize((width, height), Image.Resampling.BILINEAR)
        buffer = io.BytesIO()
        picture.save(buffer, format="PNG")
        tensors.append(preprocess(buffer.getvalue(), spec))
    return tensors


def run(session: ort.InferenceSession, spec: InputSpec, tensors: Sequence[np.ndarray]) -> list[list[np.ndarray]]:
    try:
        return [[np.asarray(o) for o in session.run(None, {spec.name: t})] for t in tensors]
    except Exception as exc:  # onnxruntime's errors are untyped
        raise PublishError("inference_failed", f"The model fails on its reference inputs: {str(exc)[:300]}") from None


def top1(outputs: list[np.ndarray], detection: bool) -> int:
    """Best class of a classifier, or the class of a detector's most confident box."""
    first = outputs[0]
    if not detection:
        return int(np.argmax(first.reshape(-1)))
    rows = first.reshape(-1, first.shape[-1])
    scores = rows[:, 4:5] * rows[:, 5:]
    return int(np.unravel_index(int(np.argmax(scores)), scores.shape)[1])


def latency_ms(session: ort.InferenceSession, spec: InputSpec, tensors: Sequence[np.ndarray], rounds: int) -> float:
    """Median latency over ``rounds`` passes of the tensors, after one warm-up pass."""
    run(session, spec, tensors[:1])
    samples = []
    for _ in range(rounds):
        for tensor in tensors:
            start = time.perf_counter()
            session.run(None, {spec.name: tensor})
            samples.append((time.perf_counter() - start) * 1000)
    return float(np.median(samples))

"""A second labelled image set the project did not draw: scikit-learn's handwritten digits, with an edge and a
cloud model trained on it.

    .venv/bin/pip install -e '.[train]'      # scikit-learn, onnx; never needed at run time
    .venv/bin/python -m zoo.digits           # retrains both and rewrites their ONNX and JSON files

The data is `sklearn.datasets.load_digits`: 1,797 8x8 greyscale digits
(values 0-16) from the UCI "Optical Recognition of Handwritten Digits" set
(CC BY 4.0), shipped inside the scikit-learn wheel, so nothing is downloaded.
A fixed, stratified half is the training split; the other half, the test
split, is held out for the metrics here and for ``bench.hybrid``.

A digit becomes a camera frame as an 8x8 ``uint8`` image with ``pixel =
15 * value`` (0-240, exact both ways), so the models read frames through the
device's own pre-processing (``colour`` GRAY, ``scale`` 1/240: features in
0-1). The edge model is a multinomial logistic regression (650 weights), the
cloud model a 256-128 ReLU MLP (about 50k). Both are written to ONNX from
their learned weights with ``onnx.helper`` (Flatten, MatMul, Add, Relu) and
output logits; the metrics in ``zoo/digits-<role>.json`` are those of the ONNX
files under onnxruntime.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier

from agent.kernel.spec import ClassificationOutput, InputSpec, Thresholds
from zoo import HERE, ONNX_DIR

EDGE = "digits-edge"
CLOUD = "digits-cloud"
LABELS = [str(d) for d in range(10)]
VERSION = "1.0.0"
SIDE = 8
PIXEL_GAIN = 15
"""A digit value v (0-16) is the pixel 15 * v, so frames use most of the 0-255 range and convert back exactly."""
SPLIT_SEED = 0
TEST_SHARE = 0.5
CLOUD_SEED = 1
CLOUD_HIDDEN = (256, 128)
EDGE_C = 1.0
CLOUD_ALPHA = 1e-3
CLOUD_MAX_ITER = 300
# Opset 17 and IR 8: what onnxruntime 1.18 (the agent's floor) and later load.
OPSET = 17
IR_VERSION = 8

INPUT_SPEC = InputSpec(
    name="image",
    shape=[None, 1, SIDE, SIDE],
    layout="NCHW",
    dtype="float32",
    colour="GRAY",
    resize="stretch",
    scale=1.0 / (16 * PIXEL_GAIN),
    mean=[0.0],
    std=[1.0],
)
OUTPUT = ClassificationOutput(output="logits", softmax=True, top_k=3)
THRESHOLDS = Thresholds(escalate_below=0.6, act_above=0.8)

Layers = list[tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]]
"""(weights of shape (inputs, outputs), bias) per layer; ReLU between layers, none after the last."""


@dataclass(frozen=True)
class Split:
    """The digits as frames and as features, split once with a fixed seed."""

    train_frames: npt.NDArray[np.uint8]
    train_labels: npt.NDArray[np.int64]
    test_frames: npt.NDArray[np.uint8]
    """(n, 8, 8) greyscale frames."""
    test_labels: npt.NDArray[np.int64]

    @property
    def train_features(self) -> npt.NDArray[np.float64]:
        return features(self.train_frames)

    @property
    def test_features(self) -> npt.NDArray[np.float64]:
        return features(self.test_frames)


def split() -> Split:
    """The stratified train/test split every model and benchmark here uses."""
    digits = load_digits()
    values = np.asarray(digits.images)
    if values.min() < 0 or values.max() > 16 or not np.array_equal(values, np.round(values)):
        raise ValueError("load_digits no longer holds integers 0-16")
    frames = (values * PIXEL_GAIN).astype(np.uint8)
    labels = np.asarray(digits.target, dtype=np.int64)
    train_f, test_f, train_l, test_l = train_test_split(
        frames, labels, test_size=TEST_SHARE, stratify=labels, random_state=SPLIT_SEED
    )
    return Split(train_f, train_l, test_f, test_l)


def features(frames: npt.NDArray[np.uint8]) -> npt.NDArray[np.float64]:
    """What the models read: pixel * scale, flattened; the device computes the same in float32."""
    return np.asarray(frames, dtype=np.float64).reshape(len(frames), -1) * INPUT_SPEC.scale


def bgr(frame: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    """A greyscale frame as a camera hands it to the agent: BGR, three equal channels."""
    return np.ascontiguousarray(np.repeat(frame[:, :, None], 3, axis=2))


def train_edge(data: Split) -> LogisticRegression:
    return LogisticRegression(C=EDGE_C, max_iter=2000).fit(data.train_features, data.train_labels)


def train_cloud(data: Split) -> MLPClassifier:
    model = MLPClassifier(
        hidden_layer_sizes=CLOUD_HIDDEN, alpha=CLOUD_ALPHA, max_iter=CLOUD_MAX_ITER, random_state=CLOUD_SEED
    )
    return model.fit(data.train_features, data.train_labels)


def layers(model: LogisticRegression | MLPClassifier) -> Layers:
    """The learned weights as (inputs x outputs, bias) pairs."""
    if isinstance(model, LogisticRegression):
        return [(np.asarray(model.coef_, dtype=np.float64).T, np.asarray(model.intercept_, dtype=np.float64))]
    if model.activation != "relu" or model.out_activation_ != "softmax":
        raise ValueError("only ReLU MLPs with a softmax output are exported")
    return [(np.asarray(w), np.asarray(b)) for w, b in zip(model.coefs_, model.intercepts_, strict=True)]


def logits(weights: Layers, x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """The forward pass the ONNX graph computes, in float64: the reference it must match."""
    hidden = x
    for index, (w, b) in enumerate(weights):
        hidden = hidden @ w + b
        if index < len(weights) - 1:
            hidden = np.maximum(hidden, 0.0)
    return hidden


def to_onnx(weights: Layers, name: str, description: str) -> onnx.ModelProto:
    """Flatten, then MatMul + Add per layer with Relu between: image (N, 1, 8, 8) -> logits (N, 10)."""
    nodes = [helper.make_node("Flatten", ["image"], ["x0"], axis=1)]
    initializers = []
    current = "x0"
    for index, (w, b) in enumerate(weights):
        initializers += [
            numpy_helper.from_array(w.astype(np.float32), f"w{index}"),
            numpy_helper.from_array(b.astype(np.float32), f"b{index}"),
        ]
        last = index == len(weights) - 1
        product, summed = f"m{index}", "logits" if last else f"a{index}"
        nodes += [
            helper.make_node("MatMul", [current, f"w{index}"], [product]),
            helper.make_node("Add", [product, f"b{index}"], [summed]),
        ]
        current = summed
        if not last:
            nodes.append(helper.make_node("Relu", [summed], [f"h{index}"]))
            current = f"h{index}"
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 1, SIDE, SIDE])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", len(LABELS)])],
        initializers,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="zoo.digits", doc_string=description
    )
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    return model


def session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def onnx_logits(path: Path, frames: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
    """Logits of the ONNX file at ``path`` for greyscale frames, fed as ``INPUT_SPEC`` says."""
    batch = (frames.astype(np.float32) * np.float32(INPUT_SPEC.scale))[:, None, :, :]
    return np.asarray(session(path).run(["logits"], {"image": batch})[0], dtype=np.float32)


def _softmax(values: npt.NDArray[Any]) -> npt.NDArray[np.float64]:
    shifted = np.asarray(values, dtype=np.float64) - np.max(values, axis=1, keepdims=True)
    exp = np.exp(shifted)
    return np.asarray(exp / exp.sum(axis=1, keepdims=True))


def metrics(path: Path, weights: Layers, data: Split) -> dict[str, float]:
    """Measured on the ONNX file over the test split, plus how far it strays from the float64 forward pass."""
    raw = onnx_logits(path, data.test_frames)
    probabilities = _softmax(raw)
    confidence = probabilities.max(axis=1)
    predicted = probabilities.argmax(axis=1)
    reference = logits(weights, data.test_features)
    document = {
        "accuracy_test": float((predicted == data.test_labels).mean()),
        "mean_confidence_test": float(confidence.mean()),
        "escalation_rate_test": float((confidence < THRESHOLDS.escalate_below).mean()),
        "onnx_vs_sklearn_max_abs_diff": float(np.abs(raw - reference).max()),
        "parameters": float(sum(w.size + b.size for w, b in weights)),
        "train_images": float(len(data.train_labels)),
        "held_out_images": float(len(data.test_labels)),
    }
    return {key: round(value, 6) for key, value in document.items()}


def metadata(role: str, description: str, measured: dict[str, float], source: str) -> dict[str, Any]:
    """The registry's publish metadata (registry/metadata.py), as zoo/parts-classifier.json has it."""
    return {
        "version": VERSION,
        "task": "classification",
        "role": role,
        "description": description,
        "labels": LABELS,
        "input": INPUT_SPEC.model_dump(mode="json", exclude_unset=True),
        "output": OUTPUT.model_dump(mode="json"),
        "thresholds": THRESHOLDS.model_dump(mode="json"),
        "metrics": measured,
        "provenance": {
            "source": f"{source}; data: scikit-learn load_digits (UCI optical recognition of handwritten digits, "
            "CC BY 4.0); licence Apache-2.0, no third-party weights"
        },
    }


def write_checksums() -> None:
    """Every committed model's digest, as `zoo.train` writes them."""
    lines = [f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.name}\n" for p in sorted(ONNX_DIR.glob("*.onnx"))]
    (ONNX_DIR / "SHA256SUMS").write_text("".join(lines))


MODELS = {
    EDGE: (
        "edge",
        "Edge classifier of 8x8 handwritten digits: multinomial logistic regression on the pixels.",
        f"python -m zoo.digits: LogisticRegression(C={EDGE_C}) on the {TEST_SHARE:.0%} train split, seed {SPLIT_SEED}",
    ),
    CLOUD: (
        "cloud",
        "Cloud classifier of 8x8 handwritten digits: a 256-128 ReLU MLP, for frames the edge model is unsure of.",
        f"python -m zoo.digits: MLPClassifier{CLOUD_HIDDEN} alpha {CLOUD_ALPHA} on the train split, seed {CLOUD_SEED}",
    ),
}


def build(directory: Path = HERE) -> dict[str, dict[str, float]]:
    """Train both models, write ``onnx/<name>.onnx`` and ``<name>.json`` under ``directory``; their metrics."""
    data = split()
    trained = {EDGE: train_edge(data), CLOUD: train_cloud(data)}
    (directory / "onnx").mkdir(parents=True, exist_ok=True)
    measured = {}
    for name, model in trained.items():
        role, description, source = MODELS[name]
        weights = layers(model)
        path = directory / "onnx" / f"{name}.onnx"
        onnx.save(to_onnx(weights, name, description), str(path))
        measured[name] = metrics(path, weights, data)
        document = metadata(role, description, measured[name], source)
        (directory / f"{name}.json").write_text(json.dumps(document, indent=2) + "\n")
    return measured


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.parse_args(argv)
    for name, measured in build().items():
        print(json.dumps({"model": name, **measured}))
    write_checksums()
    return 0


if __name__ == "__main__":
    sys.exit(main())

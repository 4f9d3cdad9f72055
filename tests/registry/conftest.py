"""Fixtures of the registry tests: a small real ONNX classifier, metadata, signers and crafted bundles."""

from __future__ import annotations

import copy
import hashlib
import io
import json
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import zoo
from agent.kernel import verify
from agent.kernel.manifest import FileEntry, Manifest, ReferenceCase
from registry.bundles import Signer, build_bundle

LABELS = ["ok", "scratch", "dent"]


def make_classifier(labels: int = 3, side: int = 32, seed: int = 7) -> bytes:
    """A small convolutional classifier built with the onnx helper API (conv, relu, pool, gemm)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    weights = [
        numpy_helper.from_array(rng.normal(0, 0.3, (8, 3, 3, 3)).astype(np.float32), "conv_w"),
        numpy_helper.from_array(rng.normal(0, 0.1, (8,)).astype(np.float32), "conv_b"),
        numpy_helper.from_array(rng.normal(0, 0.5, (8, labels)).astype(np.float32), "fc_w"),
        numpy_helper.from_array(rng.normal(0, 0.1, (labels,)).astype(np.float32), "fc_b"),
    ]
    nodes = [
        helper.make_node("Conv", ["input", "conv_w", "conv_b"], ["conv"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv"], ["relu"]),
        helper.make_node("GlobalAveragePool", ["relu"], ["pool"]),
        helper.make_node("Flatten", ["pool"], ["flat"]),
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny-classifier",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, side, side])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, labels])],
        initializer=weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def make_detector(labels: int = 2, side: int = 32, seed: int = 11) -> bytes:
    """A YOLO-shaped detector: a strided conv makes a 4x4 grid of rows (cx, cy, w, h, objectness, classes)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    rows, cells = 5 + labels, (side // 8) ** 2
    nodes = [
        helper.make_node("Conv", ["image", "w", "b"], ["grid"], strides=[8, 8]),
        helper.make_node("Sigmoid", ["grid"], ["unit"]),
        helper.make_node("Mul", ["unit", "pixels"], ["scaled"]),
        helper.make_node("Reshape", ["scaled", "shape"], ["flat"]),
        helper.make_node("Transpose", ["flat"], ["detections"], perm=[0, 2, 1]),
    ]
    # Box values in input pixels, scores in 0..1, as the agent decodes them.
    pixels = np.array([side] * 4 + [1.0] * (1 + labels), dtype=np.float32).reshape(1, rows, 1, 1)
    weights = [
        numpy_helper.from_array(rng.normal(0, 0.5, (rows, 3, 8, 8)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.normal(0, 0.5, (rows,)).astype(np.float32), "b"),
        numpy_helper.from_array(pixels, "pixels"),
        numpy_helper.from_array(np.array([1, rows, cells], dtype=np.int64), "shape"),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny-detector",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, side, side])],
        [helper.make_tensor_value_info("detections", TensorProto.FLOAT, [1, cells, rows])],
        initializer=weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


@pytest.fixture(scope="session")
def detector_onnx() -> bytes:
    return make_detector()


MODELS = zoo.HERE
REAL_CLASSIFIER = "parts-classifier"


def real_model(name: str) -> tuple[bytes, dict[str, Any]] | None:
    """The project's trained model ``zoo/onnx/<name>.onnx`` and its publish metadata, when present."""
    model, metadata = MODELS / "onnx" / f"{name}.onnx", MODELS / f"{name}.json"
    if not (model.exists() and metadata.exists()):
        return None
    return model.read_bytes(), json.loads(metadata.read_text())


@pytest.fixture(scope="session")
def classifier_onnx() -> bytes:
    """The real parts classifier from models/ (see docs/models.md); a small built graph until it exists."""
    real = real_model(REAL_CLASSIFIER)
    return real[0] if real else make_classifier()


def metadata_for(version: str = "1.0.0", **overrides: Any) -> dict[str, Any]:
    """Publish metadata of the small built graph (``make_classifier``)."""
    document: dict[str, Any] = {
        "version": version,
        "task": "classification",
        "labels": list(LABELS),
        "input": {"name": "input", "shape": [1, 3, 32, 32], "mean": [0.5], "std": [0.25]},
        "output": {"kind": "classification", "output": "logits"},
        "thresholds": {"escalate_below": 0.5, "act_above": 0.9},
        "metrics": {"accuracy": 0.93},
        "provenance": {"git_commit": "0123abcd", "ci_run": "https://ci.example/run/1"},
        "reference_count": 3,
    }
    document.update(overrides)
    return document


def classifier_metadata(version: str = "1.0.0", **overrides: Any) -> dict[str, Any]:
    """Publish metadata for ``classifier_onnx``: the real model's own file when it is there."""
    real = real_model(REAL_CLASSIFIER)
    if real is None:
        return metadata_for(version, **overrides)
    document = real[1]
    document.update(
        version=version,
        provenance={**document.get("provenance", {}), "git_commit": "0123abcd", "ci_run": "https://ci.example/run/1"},
        reference_count=3,
    )
    document.update(overrides)
    return document


@pytest.fixture
def metadata() -> Callable[..., dict[str, Any]]:
    return classifier_metadata


@pytest.fixture
def png_images() -> list[bytes]:
    return make_png_images()


def make_png_images() -> list[bytes]:
    """Three small photos-like PNGs (gradients with a blob), made here so no file is needed."""
    from PIL import Image, ImageDraw

    images = []
    for index, colour in enumerate([(200, 40, 40), (40, 200, 40), (40, 40, 200)]):
        picture = Image.linear_gradient("L").resize((64, 48)).convert("RGB")
        ImageDraw.Draw(picture).ellipse((10 + index * 8, 8, 40 + index * 8, 38), fill=colour)
        buffer = io.BytesIO()
        picture.save(buffer, format="PNG")
        images.append(buffer.getvalue())
    return images


# --- crafted bundles, signed in the test -------------------------------------------------


@pytest.fixture(scope="session")
def signer() -> Signer:
    return Signer(Ed25519PrivateKey.generate())


@pytest.fixture(scope="session")
def keyring(signer: Signer) -> verify.Keyring:
    return verify.Keyring.from_trust_store([trusted(signer)])


def trusted(signer: Signer, **extra: Any) -> dict[str, Any]:
    import base64

    return {"key_id": signer.key_id, "public_key": base64.b64encode(signer.public_bytes).decode(), **extra}


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


class Crafted:
    """The pieces of a valid bundle, to be changed by a test before packing."""

    def __init__(self, model: bytes) -> None:
        import onnxruntime as ort

        tensor = np.linspace(-1, 1, 3 * 32 * 32, dtype=np.float32).reshape(1, 3, 32, 32)
        session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
        output = session.run(None, {"input": tensor})[0]
        self.files: dict[str, bytes] = {
            "model.onnx": model,
            "reference/000.input.npy": _npy(tensor),
            "reference/000.output-0.npy": _npy(output),
        }
        now = datetime.now(timezone.utc)
        self.fields: dict[str, Any] = {
            "model": "parts",
            "version": "1.2.0",
            "sequence": 5,
            "task": "classification",
            "input": {"name": "input", "shape": [1, 3, 32, 32]},
            "output": {"kind": "classification", "output": "logits"},
            "labels": list(LABELS),
            "references": [
                ReferenceCase(input="reference/000.input.npy", expected=["reference/000.output-0.npy"], atol=1e-4)
            ],
            "min_agent_version": "0.1.0",
            "created_at": now - timedelta(minutes=1),
            "expires_at": now + timedelta(days=30),
        }

    def manifest(self) -> Manifest:
        entries = [FileEntry(path=p, sha256=hashlib.sha256(d).hexdigest(), size=len(d)) for p, d in self.files.items()]
        return Manifest(files=entries, **self.fields)

    def pack(self, signer: Signer, directory: Path, *, files: dict[str, bytes] | None = None) -> Path:
        """Sign the manifest over ``self.files``, then pack ``files`` (default: the same) in the archive."""
        archive, _ = build_bundle(self.manifest(), copy.copy(self.files), signer)
        if files is not None:
            from agent.kernel.manifest import MANIFEST_NAME, SIGNATURE_NAME, canonical_bytes, canonical_json
            from registry.bundles import pack

            manifest_bytes = canonical_bytes(self.manifest())
            members = {MANIFEST_NAME: manifest_bytes, SIGNATURE_NAME: canonical_json(signer.sign(manifest_bytes))}
            members.update(files)
            archive = pack(members)
        path = directory / "bundle.tar.gz"
        path.write_bytes(archive)
        return path


@pytest.fixture(scope="session")
def tiny_classifier() -> bytes:
    return make_classifier()


@pytest.fixture
def crafted(tiny_classifier: bytes) -> Crafted:
    """Archive tests need a model, not a good one: the small built graph keeps them fast."""
    return Crafted(tiny_classifier)

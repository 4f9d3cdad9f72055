"""Inference: an onnxruntime session fed and read the way the model's spec says.

Pre-processing and decoding live in the device kernel
(``agent.kernel.preprocess``, ``agent.kernel.decode``), shared with the
control plane. ``SessionHolder`` lets the updater swap the model between two
frames.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
from pydantic import TypeAdapter, ValidationError

from agent.config import InferenceSettings
from agent.kernel.decode import Result, decode_classification, decode_detection
from agent.kernel.manifest import MANIFEST_NAME, MODEL_NAME, parse_manifest
from agent.kernel.preprocess import Image, Preprocessor
from agent.kernel.spec import ClassificationOutput, DetectionOutput, InputSpec, OutputDecoding, Thresholds

log = logging.getLogger(__name__)


# Execution providers by short name, in the order we prefer them when allowed.
PROVIDERS: dict[str, str] = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "cpu": "CPUExecutionProvider",
}


class ModelLoadError(RuntimeError):
    """A model file that cannot be loaded or does not match its spec."""


def choose_providers(allowed: Sequence[str], available: Sequence[str]) -> list[str]:
    """The execution providers to ask for: allowed by config, present here, CPU always last."""
    unknown = [name for name in allowed if name not in PROVIDERS]
    if unknown:
        raise ValueError(f"unknown execution provider(s) {unknown}; known: {', '.join(PROVIDERS)}")
    chosen = [PROVIDERS[name] for name in PROVIDERS if name in allowed and name != "cpu"]
    return [p for p in chosen if p in available] + [PROVIDERS["cpu"]]


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
        """Load a model described by a metadata JSON (``zoo/<name>.json``: input, output, labels,
        thresholds, and the model at ``file`` or else ``onnx/<name>.onnx`` beside it), or a ``.onnx``
        with such a JSON beside it or one folder up."""
        meta_path = path.with_suffix(".json") if path.suffix == ".onnx" else path
        if path.suffix == ".onnx" and not meta_path.exists():
            meta_path = path.parent.parent / f"{path.stem}.json"  # zoo/onnx/x.onnx -> zoo/x.json
        try:
            document = json.loads(meta_path.read_bytes())
            # zoo/<name>.json describes zoo/onnx/<name>.onnx unless it names its file.
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
        self._shadow: Inferer | None = None
        self._lock = threading.Lock()
        self.swaps = 0

    @property
    def shadow(self) -> Inferer | None:
        """A candidate run beside the model in service on the same frames, never acted on."""
        return self._shadow

    def set_shadow(self, session: Inferer | None) -> Inferer | None:
        """Start (or stop, with None) shadowing from the next frame; returns the candidate it replaces."""
        with self._lock:
            old, self._shadow = self._shadow, session
        if session is not None:
            log.info("shadow started", extra={"model": session.name, "version": session.version})
        elif old is not None:
            log.info("shadow stopped", extra={"model": old.name, "version": old.version})
        return old

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
        log.info("model swapped", extra={"model": session.name, "version": session.version, "fallback": fallback})
        return old

    def infer(self, frame: Image) -> Result:
        session = self._session  # one read per frame: a swap lands between frames
        return session.infer(frame)

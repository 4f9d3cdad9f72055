"""The cloud model: the larger registry model that answers what devices escalate, loaded once per worker.

Which model: the version a ``cloud``-role model's ``cloud`` alias names
(``CLOUD_MODEL``, default the project's ``cloud-classifier``), else that
model's newest published version. It is read from its signed FP32 bundle
(the archive's sha256 checked against the registry's record), loaded into
onnxruntime with the execution providers this host has of those
``CLOUD_EXECUTION_PROVIDERS`` names (CPU last, always), and kept for the
life of the worker process, keyed by the bundle's digest: moving the alias
loads the new version on the next batch, once.

Frames are preprocessed by the device kernel's own ``Preprocessor`` (via
``registry.inspection.preprocess``) and answered in one ``session.run`` per
batch when the model's batch dimension is dynamic, one by one otherwise.
"""

from __future__ import annotations

import hashlib
import io
import logging
import tarfile
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnxruntime as ort
from django.conf import settings

from agent.kernel.decode import Result, decode_classification
from agent.kernel.spec import ClassificationOutput, InputSpec
from core.errors import ServiceError
from registry import inspection
from registry.inspection import PublishError
from registry.models import Alias, Bundle, ModelVersion
from registry.variants import FP32

log = logging.getLogger(__name__)

ALIAS = "cloud"
MODEL_MEMBER = "model.onnx"
# A bundle's model larger than this is not read into a worker (the registry bounds uploads far lower).
MAX_MODEL_BYTES = 1024 * 1024 * 1024


@dataclass(frozen=True)
class CloudModel:
    name: str
    version: str
    digest: str
    session: ort.InferenceSession
    spec: InputSpec
    output: ClassificationOutput
    labels: list[str]

    @property
    def batches(self) -> bool:
        """Whether the input's batch dimension is dynamic: a batch is one ``session.run``."""
        first = self.session.get_inputs()[0].shape[0]
        return not isinstance(first, int)

    def answer(self, images: list[bytes]) -> list[Result | None]:
        """The model's top-1 answer for each encoded image; None for one it cannot read."""
        tensors: list[np.ndarray | None] = []
        for image in images:
            try:
                tensors.append(inspection.preprocess(image, self.spec))
            except PublishError as exc:
                log.warning("escalated image unreadable by the cloud model", extra={"error": exc.detail})
                tensors.append(None)
        readable = [t for t in tensors if t is not None]
        outputs: list[np.ndarray] = []
        if readable and self.batches:
            outputs = list(self.session.run(None, {self.spec.name: np.concatenate(readable)})[0])
        else:
            outputs = [self.session.run(None, {self.spec.name: t})[0][0] for t in readable]
        answers: list[Result | None] = []
        rows = iter(outputs)
        for tensor in tensors:
            answers.append(None if tensor is None else decode_classification(next(rows), self.output, self.labels))
        return answers


_cache: dict[str, CloudModel] = {}
_lock = threading.Lock()


def current_version() -> ModelVersion:
    """The version the cloud answers with now (module docstring); ``no_cloud_model`` when there is none."""
    name = settings.CLOUD_MODEL
    alias = Alias.objects.filter(model__name=name, model__role="cloud", name=ALIAS).select_related("version")
    found = alias.first()
    if found is not None:
        return found.version
    newest = (
        ModelVersion.objects.filter(
            model__name=name, model__role="cloud", bundles__target=FP32, deprecated_at__isnull=True
        )
        .select_related("model")
        .order_by("-sequence")
        .first()
    )
    if newest is None:
        raise ServiceError("no_cloud_model", f"No published cloud model named {name!r}.", 503)
    return newest


def load(version: ModelVersion | None = None) -> CloudModel:
    """The cloud model for ``version`` (default ``current_version()``), from this process's cache when loaded."""
    version = version or current_version()
    bundle = Bundle.objects.get(version=version, target=FP32)
    with _lock:
        cached = _cache.get(bundle.sha256)
        if cached is not None:
            return cached
        model = _open(version, bundle)
        _cache.clear()  # one cloud model per worker: the previous one is done with
        _cache[bundle.sha256] = model
        log.info("cloud model loaded", extra={"model": model.name, "version": model.version})
        return model


def _open(version: ModelVersion, bundle: Bundle) -> CloudModel:
    with bundle.file.open("rb") as handle:
        archive = handle.read()
    if hashlib.sha256(archive).hexdigest() != bundle.sha256:
        raise ServiceError("bundle_corrupt", f"The stored bundle of {version} does not match its digest.", 500)
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        member = tar.getmember(MODEL_MEMBER)
        if not member.isfile() or member.size > MAX_MODEL_BYTES:
            raise ServiceError("bundle_corrupt", f"The bundle of {version} holds no usable {MODEL_MEMBER}.", 500)
        extracted = tar.extractfile(member)
        assert extracted is not None  # a regular file, checked above
        model_bytes = extracted.read()
    options = ort.SessionOptions()
    options.intra_op_num_threads = settings.CLOUD_INTRA_OP_THREADS
    session = ort.InferenceSession(model_bytes, sess_options=options, providers=providers())
    return CloudModel(
        name=version.model.name,
        version=version.version,
        digest=bundle.sha256,
        session=session,
        spec=InputSpec.model_validate(version.input_spec),
        output=ClassificationOutput.model_validate(version.output),
        labels=list(version.labels),
    )


def providers() -> list[str]:
    """The configured execution providers this onnxruntime build has, in order, then CPU."""
    available = set(ort.get_available_providers())
    chosen = [p for p in settings.CLOUD_EXECUTION_PROVIDERS if p in available and p != "CPUExecutionProvider"]
    return [*chosen, "CPUExecutionProvider"]


def describe(model: CloudModel) -> dict[str, Any]:
    return {"model": model.name, "version": model.version, "providers": model.session.get_providers()}

"""Signed bundles of a version, one per target: the fp32 bundle built at publish, the INT8 variant in a worker."""

from __future__ import annotations

import hashlib
import io
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from django.core.files.base import ContentFile
from django.db import transaction
from django.utils import timezone
from pydantic import TypeAdapter

from agent.kernel import verify
from agent.kernel.manifest import MODEL_NAME, FileEntry, Manifest, Provenance, ReferenceCase
from agent.kernel.spec import InputSpec, OutputDecoding
from core.models import AuditLog
from registry import inspection
from registry.bundles import build_bundle
from registry.models import Bundle, KeyringUpdate, ModelVersion, SigningKey
from registry.quantize import quantize

FP32, INT8 = "cpu-fp32", "cpu-int8"


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def _entry(path: str, data: bytes) -> FileEntry:
    return FileEntry(path=path, sha256=hashlib.sha256(data).hexdigest(), size=len(data))


def build_target_bundle(
    version: ModelVersion,
    target: str,
    model_bytes: bytes,
    tensors: list[np.ndarray],
    outputs: list[list[np.ndarray]],
    *,
    metrics: dict[str, Any] | None = None,
    atol: float | None = None,
) -> Bundle:
    """Write, sign and store the bundle of ``version`` for ``target``."""
    files: dict[str, bytes] = {MODEL_NAME: model_bytes}
    cases = []
    detection = version.model.task == "detection"
    tolerance = dict(version.tolerance or {})
    if atol is not None:
        tolerance["atol"] = max(atol, tolerance.get("atol", 0.0))
    for index, (tensor, results) in enumerate(zip(tensors, outputs, strict=True)):
        stem = f"reference/{index:03d}"
        files[f"{stem}.input.npy"] = _npy(tensor)
        expected = []
        for n, result in enumerate(results):
            files[f"{stem}.output-{n}.npy"] = _npy(result)
            expected.append(f"{stem}.output-{n}.npy")
        cases.append(
            ReferenceCase(
                input=f"{stem}.input.npy",
                expected=expected,
                atol=tolerance.get("atol", 1e-3),
                rtol=tolerance.get("rtol", 1e-3),
                top1=None if detection else inspection.top1(results, detection),
            )
        )
    created = version.created_at or timezone.now()
    provenance = dict(version.provenance)
    provenance["published_by"] = version.published_by.get_username() if version.published_by else None
    manifest = Manifest(
        model=version.model.name,
        version=version.version,
        sequence=version.sequence,
        task=version.model.task,  # type: ignore[arg-type]
        target=target,
        files=[_entry(path, data) for path, data in files.items()],
        input=InputSpec.model_validate(version.input_spec),
        output=version.output,
        labels=version.labels,
        thresholds=version.thresholds,
        references=cases,
        min_agent_version=version.min_agent_version,
        created_at=created,
        expires_at=version.bundle_expires_at(created),
        provenance=Provenance(metrics=version.metrics, **{k: v for k, v in provenance.items() if v is not None}),
        quantization=metrics if target == INT8 else None,
    )
    key = SigningKey.current()
    archive, manifest_bytes = build_bundle(manifest, files, key.signer())
    name = f"{version.model.name}-{version.version}-{target}.tar.gz"
    bundle = Bundle(
        version=version,
        target=target,
        sha256=hashlib.sha256(archive).hexdigest(),
        size=len(archive),
        manifest_sha256=hashlib.sha256(manifest_bytes).hexdigest(),
        key_id=key.key_id,
        metrics=metrics or {},
    )
    # Saved through the storage API (local folder or S3 by configuration). A
    # rollback of the surrounding transaction leaves an unreferenced file
    # behind, never a row pointing at a missing one.
    bundle.file.save(name, ContentFile(archive), save=False)
    bundle.save()
    return bundle


def keyring() -> verify.Keyring:
    """The control plane's own view of the trust store, for checking what it serves."""
    latest = KeyringUpdate.objects.first()
    return verify.Keyring.from_trust_store(
        [k.as_trusted() for k in SigningKey.objects.all()], latest.sequence if latest else 0
    )


def read_bundle(bundle: Bundle, directory: Path) -> verify.VerifiedBundle:
    """Copy a stored bundle out of storage and verify it like a device would."""
    directory.mkdir(parents=True, exist_ok=True)
    archive = directory / "bundle.tar.gz"
    with bundle.file.open("rb") as source, archive.open("wb") as out:
        for chunk in source.chunks():
            out.write(chunk)
    return verify.verify_bundle(archive, directory / "unpacked", keyring(), agent_version="999999.0.0")


def build_int8_bundle(version: ModelVersion) -> Bundle:
    """Quantise the fp32 model of ``version``, calibrated on its reference inputs. Idempotent."""
    existing = version.bundles.filter(target=INT8).first()
    if existing is not None:
        return existing
    fp32 = version.bundles.get(target=FP32)
    with tempfile.TemporaryDirectory(prefix="edgefleet-int8-") as tmp:
        verified = read_bundle(fp32, Path(tmp))
        model_bytes = (verified.directory / MODEL_NAME).read_bytes()
        tensors = [np.load(verified.directory / c.input, allow_pickle=False) for c in verified.manifest.references]
    calibration: list[np.ndarray] = []
    if version.calibration:
        with version.calibration.open("rb") as handle, np.load(io.BytesIO(handle.read()), allow_pickle=False) as npz:
            calibration = [npz[name] for name in sorted(npz.files)]
    spec = InputSpec.model_validate(version.input_spec)
    output = TypeAdapter(OutputDecoding).validate_python(version.output)
    result = quantize(model_bytes, spec, tensors, calibration, output=output, labels=list(version.labels))
    with transaction.atomic():
        locked = ModelVersion.objects.select_for_update().get(pk=version.pk)
        existing = locked.bundles.filter(target=INT8).first()
        if existing is not None:
            return existing
        # Integer kernels differ between CPUs (VNNI or not): a device's int8 outputs
        # may stray from ours by as much as int8 strays from fp32, and no more.
        bundle = build_target_bundle(
            locked,
            INT8,
            result.model,
            tensors,
            result.outputs,
            metrics=result.metrics,
            atol=result.metrics["max_abs_output_delta"],
        )
        AuditLog.record(actor=None, action="bundle.quantize", target=locked, target_bundle=INT8, **result.metrics)
    return bundle


# --- signing keys ----------------------------------------------------------------

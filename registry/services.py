"""Registry workflows that span several models: publishing and key rotation."""

from __future__ import annotations

import hashlib
import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np
from django.conf import settings
from django.core.files.base import ContentFile
from django.db import IntegrityError, transaction
from django.utils import timezone

from agent.kernel.manifest import canonical_json
from core.models import AuditLog
from registry import inspection
from registry.inspection import PublishError
from registry.metadata import PublishMetadata
from registry.models import KeyringUpdate, Model, ModelVersion, SigningKey
from registry.tasks import build_int8_bundle
from registry.variants import FP32, INT8, build_target_bundle

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Published:
    version: ModelVersion
    created: bool


def content_digest(model_bytes: bytes, metadata: PublishMetadata, images: list[bytes], calibration: list[bytes]) -> str:
    digest = hashlib.sha256()
    digest.update(hashlib.sha256(model_bytes).digest())
    digest.update(canonical_json(metadata.content()))
    for group in (images, calibration):
        digest.update(len(group).to_bytes(4, "big"))
        for image in group:
            digest.update(hashlib.sha256(image).digest())
    return digest.hexdigest()


def publish_version(
    *,
    model_name: str,
    model_bytes: bytes,
    metadata: PublishMetadata,
    images: list[bytes],
    actor: Any,
    calibration: Sequence[bytes] = (),
) -> Published:
    """Check, sign and store a new version; identical content again returns the existing one.

    The expensive part (loading the graph, running the reference inputs) runs
    before the transaction; the transaction locks the model row so two CI jobs
    publishing at once get distinct sequences.
    """
    if len(model_bytes) > settings.REGISTRY_MAX_UPLOAD_BYTES:
        raise PublishError("too_large", f"The model is over {settings.REGISTRY_MAX_UPLOAD_BYTES} bytes.", 413)
    digest = content_digest(model_bytes, metadata, images, list(calibration))
    existing = _existing(model_name, metadata, digest)
    if existing is not None:
        return existing
    session = inspection.load_session(model_bytes)
    inspection.check_graph(session, metadata.input, metadata.output, list(metadata.labels))
    if images:
        tensors = [inspection.preprocess(image, metadata.input) for image in images]
    else:
        tensors = inspection.generated_inputs(metadata.input, metadata.reference_count)
    outputs = inspection.run(session, metadata.input, tensors)
    # Calibration images only steer the INT8 variant; they must still be readable now.
    calibration_tensors = [inspection.preprocess(image, metadata.input) for image in calibration]

    try:
        with transaction.atomic():
            model, _ = Model.objects.get_or_create(
                name=model_name,
                defaults={
                    "task": metadata.task,
                    "role": metadata.role,
                    "labels": list(metadata.labels),
                    "description": metadata.description,
                },
            )
            model = Model.objects.select_for_update().get(pk=model.pk)
            if model.task != metadata.task:
                raise PublishError("task_mismatch", f"Model {model_name!r} is a {model.task} model.", 400)
            again = _existing(model_name, metadata, digest)
            if again is not None:
                return again
            version = ModelVersion(
                model=model,
                version=metadata.version,
                sequence=model.next_sequence(),
                content_digest=digest,
                labels=list(metadata.labels),
                input_spec=metadata.input.model_dump(mode="json"),
                output=metadata.output.model_dump(mode="json"),
                thresholds=metadata.thresholds.model_dump(mode="json"),
                min_agent_version=metadata.min_agent_version or settings.REGISTRY_MIN_AGENT_VERSION,
                bundle_ttl_days=metadata.expires_in_days or settings.REGISTRY_BUNDLE_TTL_DAYS,
                tolerance=metadata.tolerance.model_dump(mode="json"),
                provenance=metadata.provenance.model_dump(mode="json", exclude_none=True),
                metrics=dict(metadata.metrics),
                published_by=actor if getattr(actor, "is_authenticated", False) and getattr(actor, "pk", 0) else None,
            )
            reference = metadata.reference_distribution
            if reference is not None:
                # The version's own drift baseline: telemetry reads it from here.
                version.reference_distribution = {
                    "confidence": list(reference.confidence),
                    "classes": dict(reference.classes),
                }
            if calibration_tensors:
                arrays = {f"c{i:04d}": t for i, t in enumerate(calibration_tensors)}
                buffer = io.BytesIO()
                np.savez_compressed(buffer, **arrays)  # type: ignore[arg-type]
                version.calibration.save("calibration.npz", ContentFile(buffer.getvalue()), save=False)
            version.full_clean()
            version.save()
            model.labels = list(metadata.labels)
            model.save(update_fields=["labels"])
            build_target_bundle(version, FP32, model_bytes, tensors, outputs)
            AuditLog.record(actor=actor, action="model_version.publish", target=version, version=metadata.version)
            if metadata.quantize:
                queue_int8(version)
    except IntegrityError:
        # Another publisher won the race for this version between our check and insert.
        again = _existing(model_name, metadata, digest)
        if again is None:
            raise
        return again
    return Published(version, created=True)


def _existing(model_name: str, metadata: PublishMetadata, digest: str) -> Published | None:
    version = (
        ModelVersion.objects.select_related("model").filter(model__name=model_name, version=metadata.version).first()
    )
    if version is None:
        return None
    if version.content_digest != digest:
        raise PublishError(
            "version_conflict",
            f"{model_name} {metadata.version} is already published with different content; publish a new version.",
            409,
        )
    if metadata.quantize and not version.bundles.filter(target=INT8).exists():
        queue_int8(version)
    return Published(version, created=False)


def queue_int8(version: ModelVersion) -> None:
    """Build the cpu-int8 bundle in a worker once the surrounding transaction commits."""
    transaction.on_commit(lambda: build_int8_bundle.delay(version.pk))


def publish_keyring_update(signed_by: SigningKey) -> KeyringUpdate:
    """Sign the set of keys devices should trust now with a key they already trust."""
    now = timezone.now()
    keys = [k.as_trusted() for k in SigningKey.objects.all() if k.is_usable(now)]
    with transaction.atomic():
        last = KeyringUpdate.objects.select_for_update().first()
        sequence = (last.sequence if last else 0) + 1
        document = {"type": "keyring", "sequence": sequence, "issued_at": now.isoformat(), "keys": keys}
        signature = signed_by.signer().sign_document(document)
        return KeyringUpdate.objects.create(
            sequence=sequence, document=document, signature=signature, signed_by=signed_by.key_id
        )


def rotate_signing_key(*, retire_old_after: timedelta | None, actor: Any = None) -> tuple[SigningKey, KeyringUpdate]:
    """Make a new signing key and announce it in an update signed by the current key.

    The old key stays valid until ``retire_old_after`` from now (bundles it
    signed keep installing until then), or for good when None.
    """
    with transaction.atomic():
        old = SigningKey.current()
        new = SigningKey.generate()
        if retire_old_after is not None:
            old.retired_at = timezone.now() + retire_old_after
            old.save(update_fields=["retired_at"])
        update = publish_keyring_update(signed_by=old)
        AuditLog.record(actor=actor, action="signing_key.rotate", target=new, previous=old.key_id)
    return new, update


def retire_signing_key(key: SigningKey, *, at: Any = None, actor: Any = None) -> KeyringUpdate | None:
    """Refuse signatures by ``key`` from ``at`` (default now) and tell devices, signed by another key."""
    with transaction.atomic():
        key.retired_at = at or timezone.now()
        key.save(update_fields=["retired_at"])
        signer = SigningKey.objects.exclude(pk=key.pk).filter(retired_at__isnull=True).first()
        AuditLog.record(actor=actor, action="signing_key.retire", target=key, at=key.retired_at.isoformat())
        if signer is None:
            log.warning(
                "key retired, no keyring update published",
                extra={"key_id": key.key_id, "reason": "no other usable key"},
            )
            return None
        return publish_keyring_update(signed_by=signer)

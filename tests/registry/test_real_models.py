"""The project's own trained models (models/, docs/models.md) through publish, INT8 and device verification."""

from __future__ import annotations

import io

import pytest

from agent.kernel import verify
from registry import variants
from registry.models import Bundle
from tests.registry.conftest import real_model
from tests.registry.helpers import publish

pytestmark = pytest.mark.django_db


def png(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def needs(name: str) -> tuple[bytes, dict]:
    found = real_model(name)
    if found is None:
        pytest.skip(f"zoo/onnx/{name}.onnx is not built yet (python -m zoo.train {name})")
    return found


def test_the_parts_classifier_publishes_quantises_and_verifies_on_its_reference_crops(
    token_client, tmp_path, django_capture_on_commit_callbacks
):
    from zoo import samples

    model, metadata = needs("parts-classifier")
    crops = samples.reference_crops(count=8)
    references = [png(s.image) for s in crops]
    calibration = [png(s.image) for s in samples.calibration_crops(count=16)]

    with django_capture_on_commit_callbacks(execute=True):
        response = publish(
            token_client("publish"),
            model,
            {**metadata, "quantize": True},
            name="parts-classifier",
            images=references,
            calibration=calibration,
        )

    assert response.status_code == 201, response.content
    int8 = Bundle.objects.get(target="cpu-int8")
    assert int8.metrics["size_ratio"] < 0.5
    assert int8.metrics["top1_agreement"] >= 0.8
    for bundle in Bundle.objects.all():
        checked = variants.read_bundle(bundle, tmp_path / bundle.target)
        assert verify.check_references(checked) == 8
    labels = metadata["labels"]
    fp32 = variants.read_bundle(Bundle.objects.get(target="cpu-fp32"), tmp_path / "again")
    # Against the crops' true labels the trained model (88 % held-out accuracy) gets most right.
    right = sum(labels[c.top1] == s.label for c, s in zip(fp32.manifest.references, crops, strict=True))
    assert right >= 5


def test_the_parts_detector_publishes_and_its_int8_variant_keeps_most_detections(
    token_client, tmp_path, django_capture_on_commit_callbacks
):
    from zoo import samples

    model, metadata = needs("parts-detector")
    frames = [png(s.image) for s in samples.reference_frames(count=4)]

    with django_capture_on_commit_callbacks(execute=True):
        response = publish(
            token_client("publish"), model, {**metadata, "quantize": True}, name="parts-detector", images=frames
        )

    assert response.status_code == 201, response.content
    int8 = Bundle.objects.get(target="cpu-int8")
    assert int8.metrics["fp32_detections"] > 0
    assert int8.metrics["detection_agreement"] >= 0.5
    checked = variants.read_bundle(Bundle.objects.get(target="cpu-fp32"), tmp_path)
    assert verify.check_references(checked) == 4

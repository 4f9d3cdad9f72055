"""The cpu-int8 variant: quantised on request, measured against fp32, signed as its own bundle."""

from __future__ import annotations

import pytest

from agent.kernel import verify
from registry import variants
from registry.models import Bundle
from tests.registry.helpers import publish

pytestmark = pytest.mark.django_db


def test_publishing_with_quantize_adds_a_signed_int8_bundle_with_its_measurements(
    token_client, classifier_onnx, metadata, png_images, tmp_path, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        response = publish(token_client("publish"), classifier_onnx, metadata(quantize=True), images=png_images)

    assert response.status_code == 201, response.content
    int8 = Bundle.objects.get(target="cpu-int8")
    fp32 = Bundle.objects.get(target="cpu-fp32")
    assert {"size_bytes", "latency_ratio", "top1_agreement", "fp32_latency_ms", "int8_latency_ms"} <= set(int8.metrics)
    assert 0 <= int8.metrics["top1_agreement"] <= 1 and int8.metrics["latency_ratio"] > 0
    checked = variants.read_bundle(int8, tmp_path)
    assert checked.manifest.target == "cpu-int8" and checked.manifest.sequence == fp32.version.sequence
    assert checked.manifest.quantization == int8.metrics
    assert verify.check_references(checked) == 3
    assert int8.sha256 != fp32.sha256


def test_quantize_action_builds_the_int8_bundle_once(
    token_client, classifier_onnx, metadata, django_capture_on_commit_callbacks
):
    ci = token_client("publish")
    publish(ci, classifier_onnx, metadata())

    with django_capture_on_commit_callbacks(execute=True):
        first = ci.post("/api/v1/models/parts/versions/1.0.0/quantize/")
    with django_capture_on_commit_callbacks(execute=True):
        again = ci.post("/api/v1/models/parts/versions/1.0.0/quantize/")

    assert first.status_code == again.status_code == 202
    assert Bundle.objects.filter(target="cpu-int8").count() == 1


def test_an_identical_republish_that_asks_for_int8_builds_it(
    token_client, classifier_onnx, metadata, django_capture_on_commit_callbacks
):
    ci = token_client("publish")
    publish(ci, classifier_onnx, metadata())

    with django_capture_on_commit_callbacks(execute=True):
        response = publish(ci, classifier_onnx, metadata(quantize=True))

    assert response.status_code == 200
    assert Bundle.objects.filter(target="cpu-int8").exists()


def test_a_detector_gets_an_int8_bundle_with_its_detection_agreement(
    token_client, detector_onnx, metadata, django_capture_on_commit_callbacks
):
    detector = metadata(
        task="detection",
        labels=["washer", "gear"],
        input={"name": "image", "shape": [1, 3, 32, 32]},
        output={"kind": "detection", "output": "detections", "score_threshold": 0.2},
        quantize=True,
    )

    with django_capture_on_commit_callbacks(execute=True):
        response = publish(token_client("publish"), detector_onnx, detector, name="parts-detector")

    assert response.status_code == 201, response.content
    metrics = Bundle.objects.get(target="cpu-int8").metrics
    assert metrics["fp32_detections"] > 0 and 0 <= metrics["detection_agreement"] <= 1


def test_a_detector_whose_rows_do_not_fit_its_labels_is_refused(token_client, detector_onnx, metadata):
    detector = metadata(
        task="detection",
        labels=["washer", "gear", "bracket"],
        input={"name": "image", "shape": [1, 3, 32, 32]},
        output={"kind": "detection", "output": "detections"},
    )

    response = publish(token_client("publish"), detector_onnx, detector, name="parts-detector")

    assert response.status_code == 400 and "5 + 3 labels" in response.json()["detail"]


def test_calibration_images_steer_int8_and_its_figures_but_stay_out_of_the_bundles(
    token_client, classifier_onnx, metadata, png_images, tmp_path, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        response = publish(
            token_client("publish"),
            classifier_onnx,
            metadata(quantize=True),
            images=png_images[:1],
            calibration=png_images * 2,
        )

    assert response.status_code == 201, response.content
    int8 = Bundle.objects.get(target="cpu-int8")
    assert (int8.metrics["reference_count"], int8.metrics["measured_on"]) == (1, 7)
    for bundle in Bundle.objects.all():
        checked = variants.read_bundle(bundle, tmp_path / bundle.target)
        assert len(checked.manifest.references) == 1


def test_an_unreadable_calibration_image_is_refused(token_client, classifier_onnx, metadata):
    response = publish(token_client("publish"), classifier_onnx, metadata(), calibration=[b"not an image"])

    assert response.status_code == 400 and response.json()["code"] == "bad_image"

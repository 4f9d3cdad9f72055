"""POST /api/v1/models/{name}/versions/: what CI sends, and every way it is refused."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from registry.models import Bundle, Model, ModelVersion
from registry.variants import read_bundle
from telemetry import drift
from telemetry.models import Baseline
from tests.registry.helpers import publish

pytestmark = pytest.mark.django_db


@pytest.fixture
def ci(token_client):
    return token_client("publish")


def test_it_publishes_a_version_with_a_signed_fp32_bundle(ci, classifier_onnx, metadata, png_images):
    response = publish(ci, classifier_onnx, metadata(), images=png_images)

    assert response.status_code == 201, response.content
    body = response.json()
    assert (body["version"], body["sequence"], body["published_by"]) == ("1.0.0", 1, "alice")
    assert [b["target"] for b in body["bundles"]] == ["cpu-fp32"]
    bundle = Bundle.objects.get()
    assert bundle.size == len(bundle.file.read())
    assert body["provenance"]["git_commit"] == "0123abcd"
    assert Model.objects.get().task == "classification"


def test_publishing_identical_content_again_returns_the_same_version(ci, classifier_onnx, metadata):
    first = publish(ci, classifier_onnx, metadata())

    again = publish(ci, classifier_onnx, metadata())

    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json()["sequence"] == first.json()["sequence"]
    assert ModelVersion.objects.count() == 1 and Bundle.objects.count() == 1


def test_the_same_version_with_different_content_is_a_conflict(ci, classifier_onnx, metadata):
    publish(ci, classifier_onnx, metadata())
    stored = ModelVersion.objects.get().labels

    response = publish(ci, classifier_onnx, metadata(labels=[*stored[:-1], "renamed"]))

    assert response.status_code == 409
    assert response.json()["code"] == "version_conflict"
    assert ModelVersion.objects.get().labels == stored


def test_each_new_version_gets_the_next_sequence(ci, classifier_onnx, metadata):
    publish(ci, classifier_onnx, metadata("1.0.0"))

    response = publish(ci, classifier_onnx, metadata("1.1.0"))

    assert response.json()["sequence"] == 2


def test_a_file_that_is_not_onnx_is_refused(ci, metadata):
    response = publish(ci, b"\x89PNG\r\n\x1a\n not a model at all", metadata())

    assert response.status_code == 400
    assert response.json()["code"] == "not_onnx"
    assert not Model.objects.exists()


@pytest.mark.parametrize(
    ("change", "says"),
    [
        (lambda m: {"input": {**m["input"], "shape": [1, 3, 64, 64]}}, lambda m: "axis 2"),
        (lambda m: {"input": {**m["input"], "name": "pixels"}}, lambda m: "'pixels'"),
        (lambda m: {"labels": m["labels"][:-1]}, lambda m: f"{len(m['labels']) - 1} labels"),
        (lambda m: {"output": {**m["output"], "output": "probs"}}, lambda m: "'probs'"),
    ],
    ids=["shape", "input-name", "label-count", "output-name"],
)
def test_metadata_that_does_not_match_the_graph_is_refused(ci, classifier_onnx, metadata, change, says):
    base = metadata()

    response = publish(ci, classifier_onnx, {**base, **change(base)})

    assert response.status_code == 400
    assert response.json()["code"] == "shape_mismatch"
    assert says(base) in response.json()["detail"]
    assert not ModelVersion.objects.exists()


def test_malformed_metadata_is_refused_with_the_field_named(ci, classifier_onnx, metadata):
    response = publish(ci, classifier_onnx, metadata(version="one"))

    assert response.status_code == 400
    assert response.json()["code"] == "bad_metadata"
    assert response.json()["detail"].startswith("version")


def test_an_upload_over_the_size_limit_is_refused_before_it_is_read(ci, classifier_onnx, metadata, settings):
    settings.REGISTRY_MAX_UPLOAD_BYTES = len(classifier_onnx) // 2

    response = publish(ci, classifier_onnx, metadata())

    assert response.status_code == 413
    assert response.json()["code"] == "too_large"


def test_a_token_without_the_publish_scope_is_forbidden(token_client, classifier_onnx, metadata):
    response = publish(token_client("read", "rollout"), classifier_onnx, metadata())

    assert response.status_code == 403
    assert not Model.objects.exists()


def test_a_request_without_a_token_is_unauthorized(anonymous, classifier_onnx, metadata):
    response = publish(anonymous, classifier_onnx, metadata())

    assert response.status_code == 401


def test_a_device_cannot_publish(enroll_device, site, classifier_onnx, metadata):
    from rest_framework.test import APIClient

    device = enroll_device(site)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=_basic(device.device.device_id, device.secret))

    assert publish(client, classifier_onnx, metadata()).status_code in (401, 403)


def _basic(user: str, password: str) -> str:
    import base64

    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_a_detection_version_of_a_classification_model_is_refused(ci, classifier_onnx, metadata):
    publish(ci, classifier_onnx, metadata())

    output = {"kind": "detection", "output": metadata()["output"]["output"]}

    response = publish(ci, classifier_onnx, metadata("2.0.0", task="detection", output=output))

    assert response.status_code == 400


def test_registry_lists_and_details_read_with_any_scope(ci, token_client, classifier_onnx, metadata):
    publish(ci, classifier_onnx, metadata())
    reader = token_client("read")

    models = reader.get("/api/v1/models/").json()["results"]
    versions = reader.get("/api/v1/models/parts/versions/").json()["results"]
    detail = reader.get("/api/v1/models/parts/versions/1.0.0/").json()
    bundles = reader.get("/api/v1/bundles/?model=parts").json()["results"]

    assert [m["name"] for m in models] == ["parts"] and models[0]["latest_version"] == "1.0.0"
    assert [v["version"] for v in versions] == ["1.0.0"]
    assert detail["bundles"][0]["download_url"].endswith(f"/api/v1/bundles/{bundles[0]['id']}/download")


def test_aliases_point_at_published_versions_only(ci, token_client, classifier_onnx, metadata):
    publish(ci, classifier_onnx, metadata())

    ok = ci.put("/api/v1/models/parts/aliases/production/", {"version": "1.0.0"}, format="json")
    unknown = ci.put("/api/v1/models/parts/aliases/candidate/", {"version": "9.9.9"}, format="json")
    by_reader = token_client("read").put("/api/v1/models/parts/aliases/candidate/", {"version": "1.0.0"}, format="json")

    assert ok.status_code == 200 and ok.json()["version"] == "1.0.0"
    assert unknown.status_code == 400
    assert by_reader.status_code == 403
    aliases = ci.get("/api/v1/models/parts/aliases/").json()
    assert aliases["count"] == 1 and aliases["results"][0]["name"] == "production"


def test_an_alias_refusal_answers_the_error_shape_its_schema_documents(ci, classifier_onnx, metadata):
    publish(ci, classifier_onnx, metadata())
    ci.post("/api/v1/models/parts/versions/1.0.0/deprecate/", {"reason": "false rejects"}, format="json")
    url = "/api/v1/models/parts/aliases/production/"
    schema = ci.get("/api/v1/schema/", {"format": "json"}).json()
    documented = schema["paths"]["/api/v1/models/{name}/aliases/{alias}/"]["put"]["responses"]
    for status in ("400", "415"):
        assert documented[status]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}
    for body, code, field in [
        ({"version": "9.9.9"}, "unknown_version", "version"),
        ({"version": "1.0.0"}, "invalid_alias", "version"),
        ({"version": 1}, "invalid", "version"),
        ({}, "invalid", "version"),
    ]:
        answer = ci.put(url, body, format="json")
        assert answer.status_code == 400, answer.content
        assert set(answer.json()) == {"code", "detail", "fields"} and answer.json()["code"] == code
        assert list(answer.json()["fields"]) == [field]
    form = ci.put(url, "version=1.0.0", content_type="application/x-www-form-urlencoded")
    assert form.status_code == 415 and form.json()["code"] == "unsupported_media_type"


def test_a_deprecated_version_stays_downloadable_but_cannot_be_aliased(ci, classifier_onnx, metadata):
    publish(ci, classifier_onnx, metadata())

    response = ci.post("/api/v1/models/parts/versions/1.0.0/deprecate/", {"reason": "false rejects"}, format="json")
    alias = ci.put("/api/v1/models/parts/aliases/production/", {"version": "1.0.0"}, format="json")

    assert response.status_code == 200 and response.json()["deprecated"] is True
    assert alias.status_code == 400 and "deprecated" in alias.json()["detail"]


def test_a_published_version_never_changes(ci, classifier_onnx, metadata):
    from django.core.exceptions import ValidationError

    publish(ci, classifier_onnx, metadata())
    version = ModelVersion.objects.get()
    version.labels = ["a", "b", "c"]

    with pytest.raises(ValidationError):
        version.full_clean()


def test_the_reference_distribution_ci_measured_becomes_the_versions_drift_baseline(ci, classifier_onnx, metadata):
    labels = metadata()["labels"]
    confidence = [0] * 14 + [50, 100, 200, 400, 600, 650]
    reference = {"confidence": confidence, "classes": {labels[0]: 1500, labels[1]: 500}}

    response = publish(ci, classifier_onnx, metadata(reference_distribution=reference))

    assert response.status_code == 201, response.content
    assert ModelVersion.objects.get().reference_distribution == reference
    baseline = drift.baseline_for("parts", "1.0.0", timezone.now())
    assert baseline is not None and baseline.source == Baseline.Source.REFERENCE
    assert baseline.confidence == confidence and baseline.frames == 2000
    assert baseline.classes == reference["classes"]


@pytest.mark.parametrize(
    "reference",
    [
        {"confidence": [1, 2, 3]},  # not the 20 shared bins
        {"confidence": [-1] + [0] * 19},
        {"confidence": [1] * 20, "classes": {"no-such-label": 3}},
    ],
)
def test_a_malformed_reference_distribution_is_refused_and_nothing_is_published(
    ci, classifier_onnx, metadata, reference
):
    response = publish(ci, classifier_onnx, metadata(reference_distribution=reference))

    assert response.status_code == 400, response.content
    assert "reference_distribution" in response.content.decode()
    assert not ModelVersion.objects.exists() and not Baseline.objects.exists()


def test_expires_in_days_sets_the_bundle_expiry(ci, classifier_onnx, metadata, tmp_path):
    response = publish(ci, classifier_onnx, metadata(expires_in_days=7))

    assert response.status_code == 201, response.content
    version = ModelVersion.objects.get()
    assert version.bundle_ttl_days == 7
    manifest = read_bundle(Bundle.objects.get(target="cpu-fp32"), tmp_path).manifest
    assert manifest.expires_at - manifest.created_at == timedelta(days=7)


def test_without_expires_in_days_bundles_expire_after_the_setting(ci, classifier_onnx, metadata, settings, tmp_path):
    settings.REGISTRY_BUNDLE_TTL_DAYS = 30
    response = publish(ci, classifier_onnx, metadata())

    assert response.status_code == 201, response.content
    assert ModelVersion.objects.get().bundle_ttl_days == 30
    manifest = read_bundle(Bundle.objects.get(target="cpu-fp32"), tmp_path).manifest
    assert manifest.expires_at - manifest.created_at == timedelta(days=30)


@pytest.mark.parametrize("days", [0, 3651])
def test_expires_in_days_out_of_range_is_refused(ci, classifier_onnx, metadata, days):
    response = publish(ci, classifier_onnx, metadata(expires_in_days=days))

    assert response.status_code == 400
    assert response.json()["code"] == "bad_metadata"
    assert not ModelVersion.objects.exists()


@pytest.mark.parametrize(
    ("change", "where"),
    [
        ({"metrics": {"top1": float("nan")}}, "metrics.top1"),
        ({"metrics": {"top1": float("inf")}}, "metrics.top1"),
        ({"input": {"mean": [float("-inf")]}}, "input.mean.0"),
    ],
)
def test_metadata_with_nan_or_infinity_is_refused_with_the_field_named(ci, classifier_onnx, metadata, change, where):
    base = metadata()
    for key, value in change.items():
        base[key] = {**base[key], **value} if isinstance(base.get(key), dict) else value
    response = publish(ci, classifier_onnx, base)

    assert response.status_code == 400
    assert response.json()["code"] == "bad_metadata"
    assert response.json()["detail"].startswith(where)
    assert "metadata" in response.json()["fields"]
    assert not ModelVersion.objects.exists()

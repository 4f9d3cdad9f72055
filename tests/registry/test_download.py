"""Bundle download for devices: Range (resume), ETag, Content-Length, and what arrives verifies."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import tarfile

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from rest_framework.test import APIClient

from agent.kernel import verify
from registry.models import Bundle
from tests.registry.helpers import publish

pytestmark = pytest.mark.django_db


def basic(device_id: str, secret: str) -> str:
    return "Basic " + base64.b64encode(f"{device_id}:{secret}".encode()).decode()


@pytest.fixture
def enrolled(enroll_device, site):
    return enroll_device(site)


@pytest.fixture
def device(enrolled) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=basic(enrolled.device.device_id, enrolled.secret))
    return client


@pytest.fixture
def bundle(token_client, classifier_onnx, metadata, png_images) -> Bundle:
    response = publish(token_client("publish"), classifier_onnx, metadata(), images=png_images)
    assert response.status_code == 201, response.content
    return Bundle.objects.get()


def body(response) -> bytes:
    return b"".join(response.streaming_content) if response.streaming else response.content


def test_a_device_downloads_the_whole_bundle_with_its_length_and_etag(device, bundle):
    response = device.get(bundle.download_path())

    data = body(response)
    assert response.status_code == 200
    assert int(response["Content-Length"]) == bundle.size == len(data)
    assert response["ETag"] == f'"{bundle.sha256}"' and response["Accept-Ranges"] == "bytes"
    assert hashlib.sha256(data).hexdigest() == bundle.sha256


def test_a_dropped_download_resumes_with_range_and_the_result_verifies(device, bundle, enrolled, tmp_path):
    full = device.get(bundle.download_path())
    received = body(full)[: bundle.size // 3]  # the link drops a third of the way in

    rest = device.get(bundle.download_path(), HTTP_RANGE=f"bytes={len(received)}-", HTTP_IF_RANGE=full["ETag"])

    assert rest.status_code == 206
    assert rest["Content-Range"] == f"bytes {len(received)}-{bundle.size - 1}/{bundle.size}"
    assert int(rest["Content-Length"]) == bundle.size - len(received)
    archive = tmp_path / "bundle.tar.gz"
    archive.write_bytes(received + body(rest))
    keyring = verify.Keyring.from_trust_store(enrolled.trust_store)
    checked = verify.verify_bundle(archive, tmp_path / "unpacked", keyring, agent_version="0.1.0")
    assert (checked.manifest.model, checked.manifest.version, checked.manifest.target) == ("parts", "1.0.0", "cpu-fp32")
    assert verify.check_references(checked) == 3


def test_a_published_bundle_verifies_with_only_the_public_key(device, bundle):
    # Plain cryptography, hashlib, tarfile and json: nothing from the project on this side.
    keys = device.get("/api/v1/keyring").json()["trust_store"]
    with tarfile.open(fileobj=io.BytesIO(body(device.get(bundle.download_path())))) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}  # type: ignore[union-attr]
    signature = json.loads(members["manifest.sig"])
    key = next(k for k in keys if k["key_id"] == signature["key_id"])

    Ed25519PublicKey.from_public_bytes(base64.b64decode(key["public_key"])).verify(
        base64.b64decode(signature["sig"]), members["manifest.json"]
    )
    manifest = json.loads(members["manifest.json"])
    assert manifest["format"] == "edgefleet.bundle/v1" and manifest["sequence"] == 1
    for entry in manifest["files"]:
        data = members[entry["path"]]
        assert (len(data), hashlib.sha256(data).hexdigest()) == (entry["size"], entry["sha256"])
    assert set(members) == {e["path"] for e in manifest["files"]} | {"manifest.json", "manifest.sig"}


def test_a_suffix_range_and_a_head_request_give_lengths_without_the_whole_file(device, bundle):
    tail = device.get(bundle.download_path(), HTTP_RANGE="bytes=-100")
    head = device.head(bundle.download_path())

    assert tail.status_code == 206 and len(body(tail)) == 100
    assert head.status_code == 200 and int(head["Content-Length"]) == bundle.size and head.content == b""


def test_an_unsatisfiable_range_is_refused_with_the_size(device, bundle):
    response = device.get(bundle.download_path(), HTTP_RANGE=f"bytes={bundle.size}-")

    assert response.status_code == 416
    assert response["Content-Range"] == f"bytes */{bundle.size}"


def test_a_matching_etag_gets_not_modified(device, bundle):
    response = device.get(bundle.download_path(), HTTP_IF_NONE_MATCH=f'"{bundle.sha256}"')

    assert response.status_code == 304


def test_an_if_range_with_another_etag_gets_the_whole_file(device, bundle):
    response = device.get(bundle.download_path(), HTTP_RANGE="bytes=10-", HTTP_IF_RANGE='"other"')

    assert response.status_code == 200 and len(body(response)) == bundle.size


def test_downloads_need_a_device_or_a_reader(anonymous, bundle, enrolled, token_client):
    from fleet import services

    assert anonymous.get(bundle.download_path()).status_code == 401
    assert token_client("read").get(bundle.download_path()).status_code == 200
    services.revoke_device(enrolled.device, actor=None, reason="stolen")
    revoked = APIClient()
    revoked.credentials(HTTP_AUTHORIZATION=basic(enrolled.device.device_id, enrolled.secret))
    assert revoked.get(bundle.download_path()).status_code == 401


def test_the_desired_model_names_the_download_and_its_digests(bundle):
    described = bundle.desired_model()

    assert described.bundle_url == f"/api/v1/bundles/{bundle.pk}/download"
    assert (described.sha256, described.size, described.sequence) == (bundle.sha256, bundle.size, 1)
    assert described.manifest_sha256 == bundle.manifest_sha256


def test_a_bundle_missing_from_storage_is_a_clear_503(device, bundle):
    bundle.file.storage.delete(bundle.file.name)

    response = device.get(bundle.download_path())

    assert response.status_code == 503 and response["Retry-After"] == "60"

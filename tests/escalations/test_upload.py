"""POST /api/v1/escalations/: a device's escalated frame, bounded, checked against its site's privacy, stored once."""

from __future__ import annotations

import hashlib
import io
import json
import threading
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection
from PIL import Image

from agent.escalation import _multipart
from escalations import services
from escalations.images import check
from escalations.metadata import parse
from escalations.models import Escalation
from fleet import services as fleet_services
from fleet.models import EscalationPrivacy
from tests.escalations.conftest import URL, device_client, image_bytes, metadata_for, stored_files

pytestmark = pytest.mark.django_db


def assert_refused(response: Any, status: int, code: str, media: Path) -> dict[str, Any]:
    assert response.status_code == status, response.content
    body = response.json()
    assert body["code"] == code, body
    assert isinstance(body["detail"], str) and body["detail"]
    assert Escalation.objects.count() == 0
    assert stored_files(media) == []
    return body


def set_privacy(site: Any, mode: str) -> None:
    site.escalation_privacy = mode
    site.save(update_fields=["escalation_privacy"])


# --- what is stored -------------------------------------------------------------------------------


def test_a_device_uploads_a_frame_and_both_row_and_file_are_stored(upload, enrolled, site, media):
    frame = image_bytes(64, 48)

    response = upload(image=frame)

    assert response.status_code == 201, response.content
    body = response.json()
    row = Escalation.objects.get()
    assert body["id"] == row.pk and body["device"] == enrolled.device.device_id and body["site"] == site.slug
    assert (row.label, row.confidence, row.threshold) == ("scratch", 0.41, 0.6)
    assert row.state == Escalation.State.AWAITING_CLOUD and row.privacy == EscalationPrivacy.FULL
    assert row.captured_at.isoformat() == "2026-12-01T10:30:00+00:00"
    assert (row.image_width, row.image_height, row.image_bytes) == (64, 48, len(frame))
    assert row.content_type == "image/jpeg" and row.image_sha256 == hashlib.sha256(frame).hexdigest()
    received = row.received_at
    assert row.image_path.startswith(f"escalations/{site.slug}/{received:%Y}/{received:%m}/")
    assert row.image_path.endswith(".jpg")
    assert stored_files(media) == [media / row.image_path]
    assert (media / row.image_path).read_bytes() == frame
    assert row.cloud_label is None and row.answered_at is None and row.image_deleted_at is None


def test_a_png_frame_is_stored_as_png(upload, media):
    response = upload(image=image_bytes(10, 10, "PNG"), content_type="image/png")

    assert response.status_code == 201, response.content
    row = Escalation.objects.get()
    assert row.content_type == "image/png" and row.image_path.endswith(".png")


def test_the_agents_own_multipart_body_is_accepted(device, enrolled, media):
    metadata = metadata_for(enrolled.device.device_id, frame="cam0-000042")
    body, content_type = _multipart(metadata, image_bytes())

    response = device.post(URL, data=body, content_type=content_type)

    assert response.status_code == 201, response.content
    assert Escalation.objects.get().frame_id == "cam0-000042"


def test_a_repeated_frame_is_stored_once_and_answered_200(upload, media):
    first = upload(image=image_bytes())
    again = upload(image=image_bytes())

    assert (first.status_code, again.status_code) == (201, 200)
    assert first.json()["id"] == again.json()["id"]
    assert Escalation.objects.count() == 1
    assert len(stored_files(media)) == 1


def test_two_uploads_racing_for_one_frame_store_it_once(upload, enrolled, media):
    upload(image=image_bytes())
    # The second upload does not see the first (it committed after the check): the unique constraint decides.
    with mock.patch("escalations.services._stored", autospec=True, return_value=None):
        again = upload(image=image_bytes())

    assert again.status_code == 200, again.content
    assert Escalation.objects.count() == 1
    assert len(stored_files(media)) == 1


def test_a_failed_write_leaves_neither_row_nor_file(upload, media):
    with mock.patch("escalations.services.os.replace", autospec=True, side_effect=OSError("disk full")):
        response = upload(image=image_bytes())

    assert_refused(response, 500, "server_error", media)


def test_a_failed_insert_leaves_no_file(upload, media):
    with mock.patch.object(Escalation, "save", autospec=True, side_effect=RuntimeError("database gone")):
        response = upload(image=image_bytes())

    assert_refused(response, 500, "server_error", media)


# --- privacy, enforced by the server --------------------------------------------------------------


def test_a_metadata_site_refuses_pixels(upload, site, media):
    set_privacy(site, EscalationPrivacy.METADATA)

    body = assert_refused(upload(image=image_bytes()), 403, "pixels_forbidden", media)

    assert "frame" in body["fields"]


def test_a_metadata_site_refuses_pixels_before_looking_at_them(upload, site, media):
    set_privacy(site, EscalationPrivacy.METADATA)

    assert_refused(upload(image=b"not even an image"), 403, "pixels_forbidden", media)


def test_a_metadata_site_accepts_metadata_alone_and_serves_no_image(upload, site, media, token_client):
    set_privacy(site, EscalationPrivacy.METADATA)

    response = upload()

    assert response.status_code == 201, response.content
    row = Escalation.objects.get()
    assert row.image_path is None and row.privacy == EscalationPrivacy.METADATA and not response.json()["has_image"]
    assert stored_files(media) == []
    image = token_client("read").get(f"{URL}{row.pk}/image/")
    assert image.status_code == 404 and image.json()["code"] == "no_image"


def test_a_full_site_requires_the_frame(upload, media):
    assert_refused(upload(), 400, "frame_required", media)


def test_a_crop_site_requires_the_crop_box(upload, site, media):
    set_privacy(site, EscalationPrivacy.CROP)

    body = assert_refused(upload(image=image_bytes(32, 24)), 400, "crop_required", media)

    assert "metadata.crop" in body["fields"]


def test_a_crop_site_refuses_an_image_that_is_not_the_size_of_its_box(upload, site, media):
    set_privacy(site, EscalationPrivacy.CROP)

    assert_refused(upload(image=image_bytes(64, 48), crop=[10, 20, 32, 24]), 400, "crop_mismatch", media)


def test_a_crop_sent_to_a_full_site_is_checked_too(upload, media):
    assert_refused(upload(image=image_bytes(64, 48), crop=[0, 0, 10, 10]), 400, "crop_mismatch", media)


def test_a_crop_site_stores_a_crop_that_matches_its_box(upload, site, media):
    set_privacy(site, EscalationPrivacy.CROP)

    response = upload(image=image_bytes(32, 24), crop=[10, 20, 32, 24])

    assert response.status_code == 201, response.content
    row = Escalation.objects.get()
    assert row.crop == [10, 20, 32, 24] and row.privacy == EscalationPrivacy.CROP
    assert response.json()["crop"] == [10, 20, 32, 24]


@pytest.mark.parametrize("crop", [[0, 0, 0, 10], [-1, 0, 5, 5], [0, 0, 5], [0, 0, 5.5, 5], [0, 0, 70000, 5], "box"])
def test_a_crop_box_out_of_bounds_is_invalid(upload, site, media, crop):
    set_privacy(site, EscalationPrivacy.CROP)

    body = assert_refused(upload(image=image_bytes(5, 5), crop=crop), 400, "invalid", media)

    assert any(name.startswith("metadata.crop") for name in body["fields"])


# --- what enters is bounded -----------------------------------------------------------------------


def test_an_oversized_upload_is_refused_before_it_is_read(upload, settings, media):
    settings.ESCALATION_MAX_BYTES = 64 * 1024

    assert_refused(upload(image=b"\xff\xd8" + b"\x00" * (70 * 1024)), 413, "payload_too_large", media)


def test_a_frame_with_too_many_pixels_is_refused(upload, settings, media):
    settings.ESCALATION_MAX_IMAGE_SIDE = 64

    body = assert_refused(upload(image=image_bytes(65, 8)), 413, "image_too_large", media)

    assert "65x8" in body["detail"]


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_a_truncated_frame_is_refused(upload, media, fmt):
    # Noise, so the compressed data is long enough to cut in the middle of the pixels.
    noisy = Image.frombytes("RGB", (64, 64), bytes(range(256)) * 48)
    buffer = io.BytesIO()
    noisy.save(buffer, format=fmt)
    data = buffer.getvalue()

    assert_refused(upload(image=data[: len(data) // 2]), 400, "bad_image", media)


@pytest.mark.parametrize(
    "data",
    [b"not an image at all", b"", b"GIF89a\x01\x00\x01\x00\x00\x00\x00;", image_bytes(8, 8, "GIF")],
    ids=["text", "empty", "gif-header", "gif"],
)
def test_a_frame_that_is_not_jpeg_or_png_is_refused(upload, media, data):
    response = upload(image=data)

    assert response.status_code in (400, 415), response.content
    assert response.json()["code"] in ("unsupported_image", "bad_image")
    assert Escalation.objects.count() == 0 and stored_files(media) == []


def test_a_part_other_than_metadata_and_frame_is_refused(device, enrolled, media):
    parts = {
        "metadata": json.dumps(metadata_for(enrolled.device.device_id)),
        "frame": SimpleUploadedFile("f.jpg", image_bytes(), "image/jpeg"),
        "extra": "x",
    }

    body = assert_refused(device.post(URL, parts, format="multipart"), 400, "invalid", media)

    assert "extra" in body["fields"]


def test_a_missing_metadata_part_is_invalid(device, media):
    response = device.post(URL, {"frame": SimpleUploadedFile("f.jpg", image_bytes(), "image/jpeg")}, format="multipart")

    assert assert_refused(response, 400, "invalid", media)["fields"] == {"metadata": [mock.ANY]}


def test_a_json_body_is_an_unsupported_media_type(device, enrolled, media):
    response = device.post(URL, metadata_for(enrolled.device.device_id), format="json")

    assert_refused(response, 415, "unsupported_media_type", media)


def deep(levels: int) -> str:
    return "[" * levels + "]" * levels


FUZZ = {
    "nan-confidence": lambda m: json.dumps({**m, "result": {**m["result"], "confidence": float("nan")}}),
    "infinite-threshold": lambda m: json.dumps({**m, "threshold": float("inf")}),
    "huge-float": lambda m: json.dumps(m).replace('"threshold": 0.6', '"threshold": 1e400'),
    "huge-float-in-result": lambda m: json.dumps(m).replace('"latency_ms": 12.5', '"latency_ms": 1e400'),
    "year-1": lambda m: json.dumps({**m, "ts": "0001-01-01T00:00:00+00:00"}),
    "year-1-pushed-out-by-offset": lambda m: json.dumps({**m, "ts": "0001-01-01T00:00:00+05:00"}),
    "year-9999": lambda m: json.dumps({**m, "ts": "9999-12-31T23:59:59-05:00"}),
    "year-1999": lambda m: json.dumps({**m, "ts": "1999-12-31T23:59:59+00:00"}),
    "naive-time": lambda m: json.dumps({**m, "ts": "2026-12-01T10:30:00"}),
    "numeric-time": lambda m: json.dumps({**m, "ts": 1764585000}),
    "2**64-in-result": lambda m: json.dumps({**m, "result": {**m["result"], "frame_index": 2**64}}),
    "2**64-confidence": lambda m: json.dumps({**m, "result": {**m["result"], "confidence": 2**64}}),
    "2**64-threshold": lambda m: json.dumps({**m, "threshold": 2**64}),
    "boolean-threshold": lambda m: json.dumps({**m, "threshold": True}),
    "text-threshold": lambda m: json.dumps({**m, "threshold": "0.5"}),
    "deep-result": lambda m: json.dumps({**m, "result": {**m["result"], "x": json.loads(deep(50))}}),
    "recursion-deep-result": lambda m: json.dumps(m)[:-1] + f', "x": {deep(20000)}' + "}",
    "nul-in-label": lambda m: json.dumps({**m, "result": {**m["result"], "label": "a\x00b"}}),
    "nul-in-result-key": lambda m: json.dumps({**m, "result": {**m["result"], "k\x00": 1}}),
    "nul-in-frame": lambda m: json.dumps({**m, "frame": "f\x00"}),
    "slash-in-frame": lambda m: json.dumps({**m, "frame": "../../etc/passwd"}),
    "long-frame": lambda m: json.dumps({**m, "frame": "f" * 201}),
    "long-label": lambda m: json.dumps({**m, "result": {**m["result"], "label": "l" * 201}}),
    "no-confidence": lambda m: json.dumps({**m, "result": {"label": "x"}}),
    "missing-model-name": lambda m: json.dumps({k: v for k, v in m.items() if k != "model_name"}),
    "result-not-object": lambda m: json.dumps({**m, "result": [1, 2]}),
    "not-json": lambda m: "{not json",
    "not-an-object": lambda m: "[1, 2, 3]",
    "not-utf8": lambda m: "\udcff",
}


@pytest.mark.parametrize("make", FUZZ.values(), ids=FUZZ.keys())
def test_metadata_out_of_bounds_is_answered_400_never_500(device, enrolled, media, make):
    text = make(metadata_for(enrolled.device.device_id))
    parts = {"metadata": text.encode("utf-8", "surrogateescape")} if "\udcff" in text else {"metadata": text}
    if isinstance(parts["metadata"], bytes):
        parts["metadata"] = SimpleUploadedFile("metadata.json", parts["metadata"], "application/json")
    parts["frame"] = SimpleUploadedFile("f.jpg", image_bytes(), "image/jpeg")

    response = device.post(URL, parts, format="multipart")

    body = assert_refused(response, 400, "invalid", media)
    assert all(name == "metadata" or name.startswith("metadata.") for name in body["fields"]), body


def test_a_newer_agents_extra_metadata_keys_are_ignored(upload, enrolled, media):
    metadata = {**metadata_for(enrolled.device.device_id), "lens": "wide"}

    assert upload(metadata, image=image_bytes()).status_code == 201


# --- who may post -------------------------------------------------------------------------------


def test_a_device_cannot_post_for_another_device(upload, enroll_device, site, media):
    other = enroll_device(site, name="cam-2")

    body = assert_refused(
        upload(metadata_for(other.device.device_id), image=image_bytes()), 403, "device_mismatch", media
    )

    assert "metadata.device_id" in body["fields"]


def test_a_device_posting_for_another_is_refused_before_its_image_is_decoded(upload, enroll_device, site, media):
    other = enroll_device(site, name="cam-2")

    assert_refused(upload(metadata_for(other.device.device_id), image=b"junk"), 403, "device_mismatch", media)


def test_an_unauthenticated_post_is_401(upload, anonymous, media):
    assert_refused(upload(image=image_bytes(), client=anonymous), 401, "not_authenticated", media)


def test_wrong_device_credentials_are_401(upload, enrolled, media):
    client = device_client(enrolled)
    client.credentials(HTTP_AUTHORIZATION="Basic ZGV2LW5vcGU6d3Jvbmc=")  # dev-nope:wrong

    assert_refused(upload(image=image_bytes(), client=client), 401, "authentication_failed", media)


def test_an_operator_token_cannot_post_frames(upload, token_client, media):
    assert_refused(upload(image=image_bytes(), client=token_client("fleet")), 403, "permission_denied", media)


def test_a_revoked_device_cannot_post(upload, enrolled, admin_user, media):
    fleet_services.revoke_device(enrolled.device, actor=admin_user, reason="stolen")

    assert_refused(upload(image=image_bytes()), 401, "authentication_failed", media)


# --- operators read -------------------------------------------------------------------------------


def test_operators_list_filter_and_read_escalations(upload, enroll_device, other_site, token_client, media):
    upload(image=image_bytes())
    upload(image=image_bytes(), frame="frame-000002", model_version="1.1.0")
    other = enroll_device(other_site, name="cam-9")
    response = upload(metadata_for(other.device.device_id), image=image_bytes(), client=device_client(other))
    assert response.status_code == 201, response.content
    reader = token_client("read")

    everything = reader.get(URL).json()
    assert everything["count"] == 3 and len(everything["results"]) == 3
    assert reader.get(URL, {"site": "plant-b"}).json()["count"] == 1
    assert reader.get(URL, {"device": other.device.device_id}).json()["count"] == 1
    assert reader.get(URL, {"model_version": "1.1.0"}).json()["count"] == 1
    assert reader.get(URL, {"state": "awaiting_cloud"}).json()["count"] == 3
    assert reader.get(URL, {"state": "reviewed"}).json()["count"] == 0
    assert reader.get(URL, {"since": "2100-01-01T00:00:00Z"}).json()["count"] == 0
    assert reader.get(URL, {"until": "2100-01-01T00:00:00Z"}).json()["count"] == 3
    assert reader.get(URL, {"limit": 1}).json()["next"]
    bad = reader.get(URL, {"state": "nope"})
    assert bad.status_code == 400 and bad.json()["code"] == "invalid"

    row = Escalation.objects.get(device=other.device)
    one = reader.get(f"{URL}{row.pk}/")
    assert one.status_code == 200 and one.json()["frame_id"] == "frame-000001"
    image = reader.get(f"{URL}{row.pk}/image/")
    assert image.status_code == 200 and image["Content-Type"] == "image/jpeg"
    assert b"".join(image.streaming_content) == (media / row.image_path).read_bytes()


def test_devices_and_strangers_cannot_read_escalations(upload, device, anonymous, media):
    upload(image=image_bytes())
    pk = Escalation.objects.get().pk

    assert device.get(URL).status_code == 403
    assert device.get(f"{URL}{pk}/image/").status_code == 403
    assert anonymous.get(f"{URL}{pk}/").status_code == 401


def test_an_unknown_escalation_is_404(token_client):
    response = token_client("read").get(f"{URL}999999/image/")

    assert response.status_code == 404 and response.json()["code"] == "not_found"


# --- the site's policy in the sites API ------------------------------------------------------------


def test_the_sites_api_reads_and_writes_the_escalation_policy(token_client, site):
    client = token_client("fleet")

    shown = client.get(f"/api/v1/sites/{site.slug}/").json()
    assert (shown["escalation_privacy"], shown["escalation_retention_days"]) == ("full", 30)
    changed = client.patch(
        f"/api/v1/sites/{site.slug}/", {"escalation_privacy": "crop", "escalation_retention_days": 7}, format="json"
    )
    assert changed.status_code == 200, changed.content
    site.refresh_from_db()
    assert (site.escalation_privacy, site.escalation_retention_days) == ("crop", 7)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("escalation_privacy", "nope"),
        ("escalation_privacy", 1),
        ("escalation_retention_days", 0),
        ("escalation_retention_days", 3651),
        ("escalation_retention_days", "7"),
    ],
)
def test_the_sites_api_refuses_a_bad_escalation_policy(token_client, site, field, value):
    response = token_client("fleet").patch(f"/api/v1/sites/{site.slug}/", {field: value}, format="json")

    assert response.status_code == 400, response.content
    assert response.json()["code"] == "invalid" and field in response.json()["fields"]


def test_services_receive_answers_the_stored_row_for_a_known_frame(upload, enrolled, media):
    upload(image=image_bytes())

    again = services.receive(
        enrolled.device, parse(json.dumps(metadata_for(enrolled.device.device_id))), check(image_bytes(), max_side=64)
    )

    assert not again.created and again.escalation == Escalation.objects.get()


@pytest.mark.django_db(transaction=True)
def test_two_uploads_of_one_frame_at_the_same_moment_store_it_once(enroll_device, site, media):
    enrolled = enroll_device(site)
    metadata = parse(json.dumps(metadata_for(enrolled.device.device_id)))
    real_stored = services._stored
    both_checked = threading.Barrier(2, timeout=10)

    def stored_then_wait(*args: Any) -> Any:
        found = real_stored(*args)
        both_checked.wait()  # neither has inserted yet: both go on to write
        return found

    results: list[services.Received] = []

    def post() -> None:
        try:
            results.append(services.receive(enrolled.device, metadata, check(image_bytes(), max_side=64)))
        finally:
            connection.close()

    with mock.patch("escalations.services._stored", autospec=True, side_effect=stored_then_wait):
        threads = [threading.Thread(target=post) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(20)

    assert sorted(r.created for r in results) == [False, True]
    assert results[0].escalation.pk == results[1].escalation.pk
    assert Escalation.objects.count() == 1
    assert stored_files(media) == [media / Escalation.objects.get().image_path]

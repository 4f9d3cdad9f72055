"""What the escalation tests share: media under tmp_path, images made with Pillow, and a device's upload."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from PIL import Image
from rest_framework.test import APIClient

import zoo
from escalations.models import Escalation
from fleet.models import Site
from fleet.services import Enrollment
from tests.registry.helpers import publish
from zoo import samples

URL = "/api/v1/escalations/"


def image_bytes(width: int = 64, height: int = 48, fmt: str = "JPEG") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 40, 90)).save(buffer, format=fmt)
    return buffer.getvalue()


def basic(device_id: str, secret: str) -> str:
    return "Basic " + base64.b64encode(f"{device_id}:{secret}".encode()).decode()


def device_client(enrolled: Enrollment) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=basic(enrolled.device.device_id, enrolled.secret))
    return client


def metadata_for(device_id: str, frame: str = "frame-000001", **overrides: Any) -> dict[str, Any]:
    """What agent/escalation.py ``_write`` puts in the metadata part."""
    document: dict[str, Any] = {
        "device_id": device_id,
        "ts": datetime(2026, 12, 1, 10, 30, tzinfo=timezone.utc).isoformat(),
        "model_name": "parts",
        "model_version": "1.0.0",
        "threshold": 0.6,
        "frame": frame,
        "result": {
            "label": "scratch",
            "confidence": 0.41,
            "latency_ms": 12.5,
            "model_name": "parts",
            "model_version": "1.0.0",
            "frame_index": 17,
            "ts": 1764585000.0,
            "top": [["scratch", 0.41], ["ok", 0.39]],
        },
    }
    document.update(overrides)
    return document


def stored_files(root: Path) -> list[Path]:
    """Every file under MEDIA_ROOT, temporary ones included."""
    return sorted(p for p in root.rglob("*") if p.is_file())


@pytest.fixture
def media(settings: Any, tmp_path: Path) -> Path:
    root = tmp_path / "media"
    root.mkdir()
    settings.MEDIA_ROOT = root
    return root


@pytest.fixture
def enrolled(enroll_device: Callable[..., Enrollment], site: Any) -> Enrollment:
    return enroll_device(site)


@pytest.fixture
def device(enrolled: Enrollment) -> APIClient:
    return device_client(enrolled)


@pytest.fixture
def upload(device: APIClient, enrolled: Enrollment) -> Callable[..., Any]:
    """POST an escalation as the enrolled device: metadata (a dict, or raw text) and an optional image.

    Keyword arguments other than these override metadata keys (``frame``, ``crop``, ...).
    """

    def post(
        metadata: dict[str, Any] | str | None = None,
        image: bytes | None = None,
        *,
        client: APIClient | None = None,
        content_type: str = "image/jpeg",
        **overrides: Any,
    ) -> Any:
        if metadata is None:
            metadata = metadata_for(enrolled.device.device_id, **overrides)
        parts: dict[str, Any] = {"metadata": metadata if isinstance(metadata, str) else json.dumps(metadata)}
        if image is not None:
            parts["frame"] = SimpleUploadedFile("frame.jpg", image, content_type)
        return (client or device).post(URL, parts, format="multipart")

    return post


def jpeg(image: Any) -> bytes:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


@pytest.fixture
def cloud_model(token_client: Callable[..., Any], settings: Any, tmp_path: Path) -> None:
    settings.MEDIA_ROOT = tmp_path / "media"
    metadata = json.loads(zoo.metadata_path("cloud-classifier").read_text())
    references = [jpeg(s.image) for s in samples.reference_crops(count=4)]
    client = token_client("publish")
    model = zoo.onnx_path("cloud-classifier").read_bytes()
    response = publish(client, model, metadata, name="cloud-classifier", images=references)
    assert response.status_code == 201, response.content


@pytest.fixture
def uploaded(
    cloud_model: None, site: Site, enroll_device: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> Callable[..., list[Escalation]]:
    """Upload ``count`` rendered crops from one device; the edge said ``edge_label`` for each.

    The upload's nudge to the cloud worker is held back (the suite runs tasks eagerly, inline), so the
    frames wait for the test's own run of the worker loop.
    """
    monkeypatch.setattr("escalations.tasks.answer_escalations.delay", lambda: None)
    enrolled = enroll_device(site, name="cam-esc")
    client = device_client(enrolled)

    def upload(count: int, edge_label: str = "ok", seed: int = 5) -> list[Escalation]:
        crops = samples.calibration_crops(count, seed=seed, condition="normal")
        for i, crop in enumerate(crops):
            meta = metadata_for(enrolled.device.device_id, frame=f"frame-{seed}-{i}")
            meta["result"] = {**meta["result"], "label": edge_label, "top": [[edge_label, 0.41]]}
            data = {
                "metadata": json.dumps(meta),
                "frame": SimpleUploadedFile(f"{i}.jpg", jpeg(crop.image), content_type="image/jpeg"),
            }
            response = client.post(URL, data, format="multipart")
            assert response.status_code == 201, response.content
        return list(Escalation.objects.filter(frame_id__startswith=f"frame-{seed}-").order_by("pk"))

    return upload

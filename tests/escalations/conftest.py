"""What the escalation tests share: media under tmp_path, images made with Pillow, and a device's upload."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from PIL import Image
from rest_framework.test import APIClient

from fleet.services import Enrollment

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
        "ts": datetime(2026, 12, 1, 10, 30, tzinfo=UTC).isoformat(),
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

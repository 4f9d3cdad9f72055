from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from django.core.files.uploadedfile import SimpleUploadedFile
from rest_framework.test import APIClient


def publish(
    client: APIClient,
    model: bytes,
    metadata: dict[str, Any],
    *,
    name: str = "parts",
    images: Sequence[bytes] = (),
    calibration: Sequence[bytes] = (),
) -> Any:
    data: dict[str, Any] = {
        "model": SimpleUploadedFile("model.onnx", model, content_type="application/octet-stream"),
        "metadata": json.dumps(metadata),
    }
    if images:
        data["references"] = [SimpleUploadedFile(f"ref-{i}.png", img, "image/png") for i, img in enumerate(images)]
    if calibration:
        data["calibration"] = [SimpleUploadedFile(f"cal-{i}.png", c, "image/png") for i, c in enumerate(calibration)]
    return client.post(f"/api/v1/models/{name}/versions/", data, format="multipart")

"""What the device API tests share: a small classifier published as parts 1.0.0."""

from __future__ import annotations

from typing import Any

import pytest

from tests.registry.conftest import make_classifier, make_png_images
from tests.registry.helpers import publish

# Publish metadata of the small built classifier (tests/registry/conftest.py make_classifier).
TINY_METADATA = {
    "version": "1.0.0",
    "task": "classification",
    "labels": ["ok", "scratch", "dent"],
    "input": {"name": "input", "shape": [1, 3, 32, 32], "mean": [0.5], "std": [0.25]},
    "output": {"kind": "classification", "output": "logits"},
    "reference_count": 3,
}


@pytest.fixture
def published(token_client: Any) -> None:
    response = publish(token_client("publish"), make_classifier(), TINY_METADATA, images=make_png_images())
    assert response.status_code == 201, response.content

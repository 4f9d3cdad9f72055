"""What the device API tests share: a small classifier published as parts 1.0.0."""

from __future__ import annotations

from typing import Any

import pytest

from tests.registry.conftest import make_classifier, make_png_images, metadata_for
from tests.registry.helpers import publish


@pytest.fixture
def published(token_client: Any) -> None:
    response = publish(token_client("publish"), make_classifier(), metadata_for(), images=make_png_images())
    assert response.status_code == 201, response.content

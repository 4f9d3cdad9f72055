"""Pre-processing: equal to a straightforward reference, and resizing happens before anything is float."""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
import pytest

from agent.kernel import preprocess
from agent.kernel.preprocess import LETTERBOX_FILL, Preprocessor
from agent.kernel.spec import InputSpec


def reference(frame: np.ndarray, spec: InputSpec) -> np.ndarray:
    """The textbook version: resize (or letterbox), convert colour, then per pixel (p * scale - mean) / std."""
    h, w = spec.height or frame.shape[0], spec.width or frame.shape[1]
    if spec.resize == "letterbox":
        r = min(w / frame.shape[1], h / frame.shape[0])
        nw, nh = max(1, round(frame.shape[1] * r)), max(1, round(frame.shape[0] * r))
        inner = cv2.resize(frame, (nw, nh), interpolation=cv2.INTER_LINEAR)
        canvas = np.full((h, w, 3), LETTERBOX_FILL, dtype=np.uint8)
        top, left = (h - nh) // 2, (w - nw) // 2
        canvas[top : top + nh, left : left + nw] = inner
        resized = canvas
    else:
        resized = cv2.resize(frame, (w, h), interpolation=cv2.INTER_LINEAR)
    if spec.colour == "RGB":
        pixels = resized[:, :, ::-1]
    elif spec.colour == "GRAY":
        pixels = cv2.cvtColor(resized, cv2.COLOR_BGR2GRAY)[:, :, None]
    else:
        pixels = resized
    channels = pixels.shape[2]
    out = np.zeros(pixels.shape, dtype=np.float64)
    mean = spec.mean * channels if len(spec.mean) == 1 else spec.mean
    std = spec.std * channels if len(spec.std) == 1 else spec.std
    if spec.dtype == "uint8":
        out = pixels.astype(np.float64)
    else:
        for c in range(channels):
            out[:, :, c] = (pixels[:, :, c].astype(np.float64) * spec.scale - mean[c]) / std[c]
    if spec.layout == "NCHW":
        out = out.transpose(2, 0, 1)
    return out[None]


SPECS = [
    InputSpec(name="x", shape=[1, 3, 224, 224], mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
    InputSpec(name="x", shape=[1, 320, 320, 3], layout="NHWC", colour="BGR", resize="letterbox", mean=[0.5], std=[0.5]),
    InputSpec(name="x", shape=[1, 3, 96, 128], resize="letterbox"),
    InputSpec(name="x", shape=[1, 1, 64, 64], colour="GRAY", scale=1.0, mean=[128.0], std=[64.0]),
    InputSpec(name="x", shape=[1, 3, 640, 800], dtype="uint8"),
    InputSpec(name="x", shape=[1, 3, None, None]),
]


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"{s.layout}-{s.colour}-{s.resize}-{s.dtype}-{s.shape}")
def test_it_matches_the_reference_implementation(spec: InputSpec) -> None:
    frame = np.random.default_rng(1).integers(0, 256, size=(480, 640, 3), dtype=np.uint8)

    tensor, _ = Preprocessor(spec)(frame)

    expected = reference(frame, spec)
    assert tensor.shape == expected.shape
    assert tensor.dtype == (np.uint8 if spec.dtype == "uint8" else np.float32)
    np.testing.assert_allclose(tensor.astype(np.float64), expected, rtol=1e-5, atol=1e-5)


def test_it_resizes_the_uint8_frame_before_converting_to_float(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[Any, tuple[int, ...]]] = []
    real_resize = cv2.resize

    def spy(image: np.ndarray, size: Any, **kwargs: Any) -> np.ndarray:
        seen.append((image.dtype, image.shape))
        return real_resize(image, size, **kwargs)

    monkeypatch.setattr(preprocess.cv2, "resize", spy)
    frame = np.zeros((1080, 1920, 3), dtype=np.uint8)

    tensor, _ = Preprocessor(SPECS[0])(frame)

    # The full-size frame went into the resize as uint8; only the 224x224 result became float.
    assert seen == [(np.dtype(np.uint8), (1080, 1920, 3))]
    assert tensor.shape == (1, 3, 224, 224)


def test_letterbox_geometry_maps_input_pixels_back_to_the_frame() -> None:
    spec = InputSpec(name="x", shape=[1, 3, 320, 320], resize="letterbox")
    _, geometry = Preprocessor(spec)(np.zeros((480, 640, 3), dtype=np.uint8))

    # 640x480 -> 320x240, padded 40 rows above and below.
    assert (geometry.scale_x, geometry.scale_y, geometry.pad_x, geometry.pad_y) == (0.5, 0.5, 0, 40)


def test_it_refuses_a_frame_that_is_not_bgr_uint8() -> None:
    with pytest.raises(ValueError, match="BGR uint8"):
        Preprocessor(SPECS[0])(np.zeros((10, 10), dtype=np.uint8))
    with pytest.raises(ValueError, match="BGR uint8"):
        Preprocessor(SPECS[0])(np.zeros((10, 10, 3), dtype=np.float32))  # type: ignore[arg-type]

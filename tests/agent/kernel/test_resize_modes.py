"""Each resize mode and pad space, held to an independent re-implementation of its reference.

The references below are written from the original algorithms (Ultralytics
``LetterBox``, PaddleOCR's ``resize_norm_img``) with plain numpy and cv2;
none calls the kernel. (Their ``int(round(...))`` casts, no-ops in Python 3,
are dropped.) Frames are non-square, some of odd size, some smaller than the
input (scaled up), some so wide that the width is capped.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
from pydantic import ValidationError

from agent.kernel.decode import decode_detection
from agent.kernel.preprocess import Preprocessor
from agent.kernel.spec import DetectionOutput, InputSpec

# (height, width) of the test frames.
FRAMES = [(480, 640), (37, 101), (101, 37), (33, 250), (7, 500), (20, 31), (1, 3)]


def frame_of(size: tuple[int, int], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(*size, 3), dtype=np.uint8)


def normalise(bgr: np.ndarray, colour: str, mean: list[float], std: list[float]) -> np.ndarray:
    """(x / 255 - mean) / std in float32, in the order the pixels are read: HWC."""
    pixels = bgr[:, :, ::-1] if colour == "RGB" else bgr
    out = pixels.astype(np.float32) / np.float32(255.0)
    out -= np.asarray(mean, dtype=np.float32)
    out /= np.asarray(std, dtype=np.float32)
    return out


def nchw(hwc: np.ndarray) -> np.ndarray:
    return hwc.transpose(2, 0, 1)[None]


# --- stretch ----------------------------------------------------------------------------


@pytest.mark.parametrize("size", FRAMES)
def test_stretch_resizes_to_the_input_ignoring_the_aspect(size: tuple[int, int]) -> None:
    spec = InputSpec(name="x", shape=[1, 3, 48, 72], mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
    frame = frame_of(size)

    tensor, geometry = Preprocessor(spec)(frame)

    resized = cv2.resize(frame, (72, 48), interpolation=cv2.INTER_LINEAR)
    expected = nchw(normalise(resized, "RGB", spec.mean, spec.std))
    np.testing.assert_allclose(tensor, expected, rtol=0, atol=1e-6)
    assert (geometry.scale_x, geometry.scale_y, geometry.pad_x, geometry.pad_y) == (72 / size[1], 48 / size[0], 0, 0)


# --- letterbox: Ultralytics LetterBox ------------------------------------------------------


def ultralytics_letterbox(image: np.ndarray, new_shape: tuple[int, int], fill: int = 114) -> np.ndarray:
    """``ultralytics.data.augment.LetterBox`` with its defaults (auto=False, scaleup=True, center=True)."""
    shape = image.shape[:2]
    r = min(new_shape[0] / shape[0], new_shape[1] / shape[1])
    new_unpad = round(shape[1] * r), round(shape[0] * r)
    dw, dh = new_shape[1] - new_unpad[0], new_shape[0] - new_unpad[1]
    dw /= 2
    dh /= 2
    if shape[::-1] != new_unpad:
        image = cv2.resize(image, new_unpad, interpolation=cv2.INTER_LINEAR)
    top, bottom = round(dh - 0.1), round(dh + 0.1)
    left, right = round(dw - 0.1), round(dw + 0.1)
    return cv2.copyMakeBorder(image, top, bottom, left, right, cv2.BORDER_CONSTANT, value=(fill, fill, fill))


@pytest.mark.parametrize("size", FRAMES)
@pytest.mark.parametrize("fill", [None, 0, 255])
def test_letterbox_is_ultralytics_letterbox_pixel_for_pixel(size: tuple[int, int], fill: int | None) -> None:
    extra = {} if fill is None else {"pad_value": fill}
    spec = InputSpec(
        name="x", shape=[1, 64, 96, 3], layout="NHWC", dtype="uint8", colour="BGR", resize="letterbox", **extra
    )
    frame = frame_of(size)

    tensor, _ = Preprocessor(spec)(frame)

    expected = ultralytics_letterbox(frame, (64, 96), 114 if fill is None else fill)
    assert tensor.shape == (1, 64, 96, 3)
    np.testing.assert_array_equal(tensor[0], expected)


@pytest.mark.parametrize("size", FRAMES)
def test_letterbox_pads_before_normalising_in_pixel_space(size: tuple[int, int]) -> None:
    spec = InputSpec(name="x", shape=[1, 3, 64, 64], resize="letterbox", mean=[0.5], std=[0.25])
    frame = frame_of(size, seed=1)

    tensor, _ = Preprocessor(spec)(frame)

    expected = nchw(normalise(ultralytics_letterbox(frame, (64, 64)), "RGB", [0.5], [0.25]))
    np.testing.assert_allclose(tensor, expected, rtol=0, atol=1e-6)
    # Every frame here is non-square, so the top-left corner is padding: YOLO's grey, normalised.
    assert np.isclose(tensor[0, 0, 0, 0], (114 / 255 - 0.5) / 0.25)


@pytest.mark.parametrize("size", FRAMES)
def test_letterbox_pads_after_normalising_in_normalised_space(size: tuple[int, int]) -> None:
    spec = InputSpec(
        name="x",
        shape=[1, 3, 64, 64],
        resize="letterbox",
        mean=[0.485, 0.456, 0.406],
        std=[0.229, 0.224, 0.225],
        pad_value=-0.75,
        pad_space="normalised",
    )
    frame = frame_of(size, seed=2)

    tensor, _ = Preprocessor(spec)(frame)

    # The same letterbox, a marker fill, then the pad region set to the value after normalising.
    shape = frame.shape[:2]
    r = min(64 / shape[0], 64 / shape[1])
    nw, nh = round(shape[1] * r), round(shape[0] * r)
    top, left = round((64 - nh) / 2 - 0.1), round((64 - nw) / 2 - 0.1)
    inner = cv2.resize(frame, (nw, nh), interpolation=cv2.INTER_LINEAR) if (nw, nh) != shape[::-1] else frame
    expected = np.full((64, 64, 3), -0.75, dtype=np.float32)
    expected[top : top + nh, left : left + nw] = normalise(inner, "RGB", spec.mean, spec.std)
    np.testing.assert_allclose(tensor, nchw(expected), rtol=0, atol=1e-6)


# --- fit_height: PaddleOCR resize_norm_img ---------------------------------------------------


def paddleocr_resize_norm_img(image: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """PaddleOCR ``resize_norm_img`` (rec and cls): the height fixed, the width capped, zero padding on the right."""
    img_c, img_h, img_w = shape
    h, w = image.shape[:2]
    ratio = w / float(h)
    if math.ceil(img_h * ratio) > img_w:
        resized_w = img_w
    else:
        resized_w = math.ceil(img_h * ratio)
    resized = cv2.resize(image, (resized_w, img_h))
    resized = resized.astype("float32")
    resized = resized.transpose((2, 0, 1)) / 255
    resized -= 0.5
    resized /= 0.5
    padding = np.zeros((img_c, img_h, img_w), dtype=np.float32)
    padding[:, :, 0:resized_w] = resized
    return padding


TEXT_LINE = {"resize": "fit_height", "colour": "BGR", "mean": [0.5], "std": [0.5], "pad_value": 0.0}


@pytest.mark.parametrize("size", FRAMES)
def test_fit_height_is_paddleocr_resize_norm_img(size: tuple[int, int]) -> None:
    spec = InputSpec(name="x", shape=[1, 3, 48, 320], pad_space="normalised", **TEXT_LINE)  # type: ignore[arg-type]
    frame = frame_of(size, seed=3)

    tensor, geometry = Preprocessor(spec)(frame)

    expected = paddleocr_resize_norm_img(frame, (3, 48, 320))
    np.testing.assert_allclose(tensor, expected[None], rtol=0, atol=1e-6)
    resized_w = min(320, math.ceil(48 * (size[1] / size[0])))
    assert (geometry.scale_x, geometry.scale_y, geometry.pad_x, geometry.pad_y) == (
        resized_w / size[1],
        48 / size[0],
        0,
        0,
    )


def test_fit_height_pads_with_a_normalised_zero_by_default() -> None:
    spec = InputSpec(name="x", shape=[1, 3, 48, 192], resize="fit_height", colour="BGR", mean=[0.5], std=[0.5])
    frame = frame_of((48, 60), seed=4)

    tensor, _ = Preprocessor(spec)(frame)

    np.testing.assert_allclose(tensor, paddleocr_resize_norm_img(frame, (3, 48, 192))[None], rtol=0, atol=1e-6)


@pytest.mark.parametrize("size", FRAMES)
@pytest.mark.parametrize("multiple", [1, 32])
def test_fit_height_with_a_dynamic_width_pads_to_the_next_multiple_up_to_max_width(
    size: tuple[int, int], multiple: int
) -> None:
    spec = InputSpec(
        name="x",
        shape=[1, 48, None, 3],
        layout="NHWC",
        max_width=300,
        width_multiple=multiple,
        pad_space="normalised",
        **TEXT_LINE,  # type: ignore[arg-type]
    )
    frame = frame_of(size, seed=5)

    tensor, _ = Preprocessor(spec)(frame)

    # The documented rule: resized as PaddleOCR does with 300 as the cap, the tensor as wide as
    # the resized width rounded up to the multiple, never over 300; zero (normalised) on the right.
    resized_w = min(300, math.ceil(48 * (size[1] / size[0])))
    width = min(300, math.ceil(resized_w / multiple) * multiple)
    expected = paddleocr_resize_norm_img(frame, (3, 48, 300))[:, :, :width]
    assert tensor.shape == (1, 48, width, 3)
    np.testing.assert_allclose(tensor, expected.transpose(1, 2, 0)[None], rtol=0, atol=1e-6)


@pytest.mark.parametrize("size", FRAMES)
def test_fit_height_pads_before_normalising_in_pixel_space(size: tuple[int, int]) -> None:
    spec = InputSpec(
        name="x", shape=[1, 1, 32, 128], colour="GRAY", resize="fit_height", mean=[0.5], std=[0.5], pad_value=255
    )
    frame = frame_of(size, seed=6)

    tensor, _ = Preprocessor(spec)(frame)

    h, w = size
    resized_w = min(128, math.ceil(32 * (w / h)))
    grey = cv2.cvtColor(cv2.resize(frame, (resized_w, 32), interpolation=cv2.INTER_LINEAR), cv2.COLOR_BGR2GRAY)
    canvas = np.full((32, 128), 255, dtype=np.uint8)
    canvas[:, :resized_w] = grey
    expected = (canvas.astype(np.float32) / np.float32(255) - np.float32(0.5)) / np.float32(0.5)
    np.testing.assert_allclose(tensor, expected[None, None], rtol=0, atol=1e-6)


# --- decoding undoes the letterbox ------------------------------------------------------------


def ultralytics_scale_boxes(img1_shape: tuple[int, int], boxes: np.ndarray, img0_shape: tuple[int, int]) -> np.ndarray:
    """``ultralytics.utils.ops.scale_boxes``: input-pixel xyxy boxes back to the original image."""
    gain = min(img1_shape[0] / img0_shape[0], img1_shape[1] / img0_shape[1])
    pad_x = round((img1_shape[1] - img0_shape[1] * gain) / 2 - 0.1)
    pad_y = round((img1_shape[0] - img0_shape[0] * gain) / 2 - 0.1)
    boxes = boxes.copy()
    boxes[:, [0, 2]] -= pad_x
    boxes[:, [1, 3]] -= pad_y
    boxes /= gain
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, img0_shape[1])
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, img0_shape[0])
    return boxes


@pytest.mark.parametrize("size", [(480, 640), (37, 101), (101, 37), (333, 517)])
def test_detections_of_a_letterboxed_frame_come_back_in_frame_pixels(size: tuple[int, int]) -> None:
    spec = InputSpec(name="x", shape=[1, 3, 320, 320], resize="letterbox")
    frame_h, frame_w = size
    _, geometry = Preprocessor(spec)(frame_of(size))
    # A box in the frame, drawn where the letterboxed input shows it: scaled, then shifted by the padding.
    frame_box = np.array([0.1 * frame_w, 0.2 * frame_h, 0.7 * frame_w, 0.9 * frame_h])
    r = min(320 / frame_h, 320 / frame_w)
    nw, nh = round(frame_w * r), round(frame_h * r)
    left, top = round((320 - nw) / 2 - 0.1), round((320 - nh) / 2 - 0.1)
    x1, y1 = frame_box[0] * nw / frame_w + left, frame_box[1] * nh / frame_h + top
    x2, y2 = frame_box[2] * nw / frame_w + left, frame_box[3] * nh / frame_h + top
    row = np.array([[(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1, 1.0, 0.9]], dtype=np.float32)

    result = decode_detection(row[None], DetectionOutput(output="y"), ["part"], geometry)

    box = np.array(result.detections[0].box)
    np.testing.assert_allclose(box, frame_box, atol=1e-3 * max(size))
    # Ultralytics' own inverse uses the unrounded ratio for both axes: within a pixel of ours.
    theirs = ultralytics_scale_boxes((320, 320), np.array([[x1, y1, x2, y2]]), size)[0]
    np.testing.assert_allclose(box, theirs, atol=1.0)


# --- the spec: what it accepts, and older specs unchanged ------------------------------------


def test_a_spec_without_the_new_options_dumps_the_same_fields_as_before() -> None:
    # Agents that predate the options refuse unknown manifest keys; a stretch or letterbox
    # spec that does not use them must not write them.
    for resize in ("stretch", "letterbox"):
        dumped = InputSpec(name="x", shape=[1, 3, 64, 64], resize=resize).model_dump(mode="json")  # type: ignore[arg-type]
        assert set(dumped) == {"name", "shape", "layout", "dtype", "colour", "resize", "scale", "mean", "std"}


def test_a_spec_with_the_new_options_round_trips_through_its_dump() -> None:
    spec = InputSpec(name="x", shape=[1, 3, 48, None], max_width=320, width_multiple=32, **TEXT_LINE)  # type: ignore[arg-type]
    again = InputSpec.model_validate(spec.model_dump(mode="json"))

    assert again == spec
    assert again.padding == (0.0, "pixel")


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ({"resize": "fit_height", "shape": [1, 3, None, 320]}, "needs a fixed height"),
        ({"resize": "fit_height", "shape": [1, 3, 48, None]}, "needs max_width"),
        ({"resize": "fit_height", "shape": [1, 3, 48, 320], "max_width": 200}, "differs from the shape"),
        ({"resize": "fit_height", "shape": [1, 3, 48, 320], "width_multiple": 8}, "dynamic width axis"),
        ({"resize": "letterbox", "max_width": 320}, "max_width is for resize fit_height"),
        ({"resize": "stretch", "pad_value": 114}, "stretch does not pad"),
        ({"resize": "letterbox", "pad_space": "normalised"}, "pad_space needs pad_value"),
        ({"resize": "letterbox", "pad_value": 256}, "integer from 0 to 255"),
        ({"resize": "letterbox", "pad_value": 114.5}, "integer from 0 to 255"),
        ({"resize": "letterbox", "pad_value": -1}, "integer from 0 to 255"),
        ({"resize": "letterbox", "pad_value": 2e4, "pad_space": "normalised"}, "at most 10000 from 0"),
        ({"resize": "letterbox", "pad_value": 0, "pad_space": "normalised", "dtype": "uint8"}, "needs dtype float32"),
        ({"resize": "fit_height", "shape": [1, 3, 48, None], "max_width": 20000}, "less than or equal to 16384"),
        ({"resize": "fit_height", "shape": [1, 3, 48, None], "max_width": 320, "width_multiple": 0}, "greater than"),
        ({"resize": "crop"}, "Input should be"),
    ],
)
def test_a_spec_with_inconsistent_options_is_refused_with_the_reason(fields: dict[str, object], says: str) -> None:
    document: dict[str, object] = {"name": "x", "shape": [1, 3, 64, 64], **fields}

    with pytest.raises(ValidationError, match=says):
        InputSpec.model_validate(document)

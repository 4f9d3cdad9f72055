"""Pre-processing: a camera frame into the model's input tensor, the way the input spec says.

Resizing happens on the ``uint8`` frame before anything becomes float: a 1080p
frame converted first costs about 18 times more than resizing first
(DESIGN.md, "Costs here"). The control plane uses the same code to compute a
bundle's reference outputs, so they match what a device computes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from agent.kernel.spec import LETTERBOX_PAD, InputSpec

Image = npt.NDArray[np.uint8]
FloatArray = npt.NDArray[np.float32]

LETTERBOX_FILL = LETTERBOX_PAD  # the grey YOLO models are trained with


@dataclass(frozen=True)
class Geometry:
    """How input-tensor pixels map back to frame pixels: ``frame = (input - pad) / scale``.

    ``scale_x`` and ``scale_y`` are the resize's own ratios (resized size over
    frame size, per axis), so the mapping is the exact inverse of the resize;
    ``pad_x`` and ``pad_y`` are the columns and rows of padding left and above.
    """

    scale_x: float
    scale_y: float
    pad_x: float
    pad_y: float
    frame_width: int
    frame_height: int


@dataclass(frozen=True)
class Placement:
    """Where the resized frame sits in the input tensor: a ``width`` x ``height`` image at (left, top)."""

    tensor_width: int
    tensor_height: int
    width: int
    height: int
    left: int
    top: int

    @property
    def padded(self) -> bool:
        return (self.width, self.height) != (self.tensor_width, self.tensor_height)


class Preprocessor:
    """Turns a BGR ``uint8`` frame into the model's input tensor.

    Order: resize (on ``uint8``, per the spec's mode), padding in pixel space,
    colour conversion (on the small image), then one fused multiply-add per
    channel straight into the float tensor in the model's layout: ``pixel *
    (scale / std) - mean / std``, which equals ``(pixel * scale - mean) /
    std``. Padding in normalised space is written into the tensor around the
    converted image instead, so it is not normalised.
    """

    def __init__(self, spec: InputSpec) -> None:
        self.spec = spec
        channels = 1 if spec.colour == "GRAY" else 3
        self.channels = channels
        mean = np.broadcast_to(np.asarray(spec.mean, dtype=np.float64), (channels,))
        std = np.broadcast_to(np.asarray(spec.std, dtype=np.float64), (channels,))
        self._gain = (spec.scale / std).astype(np.float32)
        self._offset = (-mean / std).astype(np.float32)
        self.pad_value, self.pad_space = spec.padding

    def target_size(self, frame_height: int, frame_width: int) -> tuple[int, int]:
        """(height, width) of the input; a dynamic dimension takes the frame's."""
        return self.spec.height or frame_height, self.spec.width or frame_width

    def place(self, frame_height: int, frame_width: int) -> Placement:
        """Where a frame of this size lands in the input tensor, per the spec's resize mode."""
        spec = self.spec
        if spec.resize == "fit_height":
            # PaddleOCR's resize_norm_img: the height fixed, the width from the aspect, rounded up, capped.
            height = spec.height or frame_height
            max_width = spec.width or spec.max_width or frame_width
            # ceil(H * (w / h)) as the reference writes it: ceil(H * w / h) can differ by one.
            new_w = min(max_width, math.ceil(height * (frame_width / frame_height)))
            if spec.width is not None:
                tensor_w = spec.width
            else:
                multiple = spec.width_multiple
                tensor_w = min(max_width, -(-new_w // multiple) * multiple)
            return Placement(tensor_w, height, new_w, height, 0, 0)
        height, width = self.target_size(frame_height, frame_width)
        if spec.resize == "letterbox":
            # Ultralytics LetterBox (scaleup, centred): half the padding on each side, the odd
            # row or column below or right, by its round(d - 0.1) / round(d + 0.1) convention.
            ratio = min(height / frame_height, width / frame_width)
            new_w, new_h = max(1, round(frame_width * ratio)), max(1, round(frame_height * ratio))
            left, top = round((width - new_w) / 2 - 0.1), round((height - new_h) / 2 - 0.1)
            return Placement(width, height, new_w, new_h, left, top)
        return Placement(width, height, width, height, 0, 0)

    def resize(self, frame: Image) -> tuple[Image, Placement, Geometry]:
        """The frame resized to its place in the input (not yet padded), still ``uint8`` and BGR."""
        frame_h, frame_w = frame.shape[:2]
        placement = self.place(frame_h, frame_w)
        if (placement.width, placement.height) == (frame_w, frame_h):
            resized = frame
        else:
            resized = _resize(frame, placement.width, placement.height)
        geometry = Geometry(
            placement.width / frame_w, placement.height / frame_h, placement.left, placement.top, frame_w, frame_h
        )
        return resized, placement, geometry

    def __call__(self, frame: Image) -> tuple[npt.NDArray[Any], Geometry]:
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise ValueError(f"expected a BGR uint8 frame of shape (H, W, 3), got {frame.dtype} {frame.shape}")
        resized, placement, geometry = self.resize(frame)
        if not placement.padded:
            return self._convert(resized), geometry
        if self.pad_space == "pixel":
            return self._convert(_pad(resized, placement, int(self.pad_value))), geometry
        # Normalised-space padding is the tensor value itself, put around the converted image.
        return _pad_tensor(self._convert(resized), placement, self.pad_value, self.spec.layout), geometry

    def _convert(self, resized: Image) -> npt.NDArray[Any]:
        """Colour order, then dtype, scale, mean/std and layout: a batch of one."""
        spec = self.spec
        if spec.colour == "RGB":
            pixels = cv2.cvtColor(resized, cv2.COLOR_BGR2RGB)
        elif spec.colour == "GRAY":
            pixels = cv2.cvtColor(resized, cv2.COLOR_BGR2GRAY)[:, :, None]
        else:
            pixels = resized
        height, width = pixels.shape[:2]
        if spec.dtype == "uint8":
            tensor_u8 = pixels.transpose(2, 0, 1) if spec.layout == "NCHW" else pixels
            return np.ascontiguousarray(tensor_u8[None])
        if spec.layout == "NCHW":
            tensor = np.empty((1, self.channels, height, width), dtype=np.float32)
            for c in range(self.channels):
                np.multiply(pixels[:, :, c], self._gain[c], out=tensor[0, c], casting="unsafe")
                tensor[0, c] += self._offset[c]
        else:
            tensor = np.empty((1, height, width, self.channels), dtype=np.float32)
            np.multiply(pixels, self._gain, out=tensor[0], casting="unsafe")
            tensor[0] += self._offset
        return tensor


def _pad(image: Image, placement: Placement, value: int) -> Image:
    bottom = placement.tensor_height - placement.height - placement.top
    right = placement.tensor_width - placement.width - placement.left
    padded = cv2.copyMakeBorder(
        image, placement.top, bottom, placement.left, right, cv2.BORDER_CONSTANT, value=(value,) * 3
    )
    return np.asarray(padded, dtype=np.uint8)


def _pad_tensor(tensor: npt.NDArray[Any], placement: Placement, value: float, layout: str) -> npt.NDArray[Any]:
    rows = slice(placement.top, placement.top + placement.height)
    columns = slice(placement.left, placement.left + placement.width)
    if layout == "NCHW":
        shape = (1, tensor.shape[1], placement.tensor_height, placement.tensor_width)
        padded = np.full(shape, value, dtype=tensor.dtype)
        padded[:, :, rows, columns] = tensor
    else:
        shape = (1, placement.tensor_height, placement.tensor_width, tensor.shape[3])
        padded = np.full(shape, value, dtype=tensor.dtype)
        padded[:, rows, columns, :] = tensor
    return padded


def _resize(image: Image, width: int, height: int) -> Image:
    # Bilinear, as YOLO-style pipelines do: INTER_AREA filters better when shrinking a lot
    # but costs 5-40x more here (3.8 ms vs 0.36 ms for 640x480 -> 224x224), more than the
    # whole budget the agent may add to a MobileNet-class model.
    return np.asarray(cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR), dtype=np.uint8)

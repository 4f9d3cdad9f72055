"""Pre-processing: a camera frame into the model's input tensor, the way the input spec says.

Resizing happens on the ``uint8`` frame before anything becomes float: a 1080p
frame converted first costs about 18 times more than resizing first
(DESIGN.md, "Costs here"). The control plane uses the same code to compute a
bundle's reference outputs, so they match what a device computes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from agent.kernel.spec import InputSpec

Image = npt.NDArray[np.uint8]
FloatArray = npt.NDArray[np.float32]

LETTERBOX_FILL = 114  # the grey YOLO models are trained with


@dataclass(frozen=True)
class Geometry:
    """How input-tensor pixels map back to frame pixels: ``frame = (input - pad) / scale``."""

    scale_x: float
    scale_y: float
    pad_x: float
    pad_y: float
    frame_width: int
    frame_height: int


class Preprocessor:
    """Turns a BGR ``uint8`` frame into the model's input tensor.

    Order: resize (on ``uint8``, letterboxed or stretched), colour conversion
    (on the small image), then one fused multiply-add per channel straight
    into the float tensor in the model's layout: ``pixel * (scale / std) -
    mean / std``, which equals ``(pixel * scale - mean) / std``.
    """

    def __init__(self, spec: InputSpec) -> None:
        self.spec = spec
        channels = 1 if spec.colour == "GRAY" else 3
        self.channels = channels
        mean = np.broadcast_to(np.asarray(spec.mean, dtype=np.float64), (channels,))
        std = np.broadcast_to(np.asarray(spec.std, dtype=np.float64), (channels,))
        self._gain = (spec.scale / std).astype(np.float32)
        self._offset = (-mean / std).astype(np.float32)

    def target_size(self, frame_height: int, frame_width: int) -> tuple[int, int]:
        """(height, width) of the input; a dynamic dimension takes the frame's."""
        return self.spec.height or frame_height, self.spec.width or frame_width

    def resize(self, frame: Image) -> tuple[Image, Geometry]:
        """The frame resized to the input size, still ``uint8`` and BGR."""
        frame_h, frame_w = frame.shape[:2]
        height, width = self.target_size(frame_h, frame_w)
        if self.spec.resize == "letterbox":
            ratio = min(width / frame_w, height / frame_h)
            new_w, new_h = max(1, round(frame_w * ratio)), max(1, round(frame_h * ratio))
            pad_x, pad_y = (width - new_w) // 2, (height - new_h) // 2
            inner = frame if (new_w, new_h) == (frame_w, frame_h) else _resize(frame, new_w, new_h)
            resized = cv2.copyMakeBorder(
                inner,
                pad_y,
                height - new_h - pad_y,
                pad_x,
                width - new_w - pad_x,
                cv2.BORDER_CONSTANT,
                value=(LETTERBOX_FILL,) * 3,
            )
            geometry = Geometry(new_w / frame_w, new_h / frame_h, pad_x, pad_y, frame_w, frame_h)
        else:
            resized = frame if (width, height) == (frame_w, frame_h) else _resize(frame, width, height)
            geometry = Geometry(width / frame_w, height / frame_h, 0.0, 0.0, frame_w, frame_h)
        return np.asarray(resized, dtype=np.uint8), geometry

    def __call__(self, frame: Image) -> tuple[npt.NDArray[Any], Geometry]:
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise ValueError(f"expected a BGR uint8 frame of shape (H, W, 3), got {frame.dtype} {frame.shape}")
        resized, geometry = self.resize(frame)
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
            return np.ascontiguousarray(tensor_u8[None]), geometry
        if spec.layout == "NCHW":
            tensor = np.empty((1, self.channels, height, width), dtype=np.float32)
            for c in range(self.channels):
                np.multiply(pixels[:, :, c], self._gain[c], out=tensor[0, c], casting="unsafe")
                tensor[0, c] += self._offset[c]
        else:
            tensor = np.empty((1, height, width, self.channels), dtype=np.float32)
            np.multiply(pixels, self._gain, out=tensor[0], casting="unsafe")
            tensor[0] += self._offset
        return tensor, geometry


def _resize(image: Image, width: int, height: int) -> Image:
    # Bilinear, as YOLO-style pipelines do: INTER_AREA filters better when shrinking a lot
    # but costs 5-40x more here (3.8 ms vs 0.36 ms for 640x480 -> 224x224), more than the
    # whole budget the agent may add to a MobileNet-class model.
    return np.asarray(cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR), dtype=np.uint8)

"""How a model is fed and read: the input spec and output decoding of a bundle.

Shared by the registry (which checks a published model against its graph and
writes these into the signed manifest) and the agent (which pre-processes
frames and decodes outputs from them). Django-free.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, model_serializer, model_validator

Task = Literal["classification", "detection"]
Label = Annotated[str, Field(min_length=1, max_length=100)]

LETTERBOX_PAD = 114
"""The grey Ultralytics YOLO pads with (``LetterBox``), in pixels."""


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


Resize = Literal["stretch", "letterbox", "fit_height"]
PadSpace = Literal["pixel", "normalised"]

MAX_SIDE = 16384
"""No image input is wider or taller than this; bounds ``max_width``."""
MAX_NORMALISED_PAD = 1e4
"""A normalised pad value is a tensor value a few units from 0; this only bounds nonsense."""

# Fields added after the first bundles shipped. A spec leaves them out of its
# dump while they hold their defaults, so a stretch or letterbox spec
# serialises to the same bytes as before: agents that predate them still parse
# the manifests of such bundles, and the content digest of a version published
# again is unchanged.
_OPTIONAL_FIELDS = ("max_width", "width_multiple", "pad_value", "pad_space")


class InputSpec(_Spec):
    """The model's single image input.

    ``shape`` is in ``layout`` order with the batch first; ``None`` (or a
    negative number in the ONNX graph) marks a dynamic dimension. Pixels are
    read as ``colour`` order, resized by ``resize``, then converted as
    ``(pixel * scale - mean) / std`` per channel when ``dtype`` is float32.

    ``resize``:

    * ``stretch``: to the input size, aspect ignored; nothing is padded.
    * ``letterbox``: scaled to fit keeping the aspect, centred, the rest
      padded (Ultralytics YOLO's ``LetterBox``).
    * ``fit_height``: scaled to the input height keeping the aspect, the width
      ``min(max width, ceil(height * w / h))``, the image at the top left and
      the rest padded on the right (PaddleOCR's recogniser/classifier
      ``resize_norm_img``). The height must be fixed. A fixed width axis is the
      max width and the tensor is always that wide; a dynamic one needs
      ``max_width``, and the tensor is the resized width rounded up to
      ``width_multiple``, never wider than ``max_width``.

    Padding is ``pad_value`` in ``pad_space``: ``pixel`` is an integer
    0-255 put in the image before conversion (so it is normalised like the
    pixels), ``normalised`` a value put in the tensor after it. Without
    ``pad_value`` each mode pads as its reference does: letterbox with pixel
    114, fit_height with 0 in the tensor.
    """

    name: Annotated[str, Field(min_length=1, max_length=200)]
    shape: Annotated[list[int | None], Field(min_length=4, max_length=4)]
    layout: Literal["NCHW", "NHWC"] = "NCHW"
    dtype: Literal["float32", "uint8"] = "float32"
    colour: Literal["RGB", "BGR", "GRAY"] = "RGB"
    resize: Resize = "stretch"
    scale: float = Field(default=1.0 / 255.0, gt=0)
    mean: Annotated[list[float], Field(min_length=1, max_length=3)] = [0.0]
    std: Annotated[list[float], Field(min_length=1, max_length=3)] = [1.0]
    max_width: int | None = Field(default=None, ge=1, le=MAX_SIDE)
    """fit_height with a dynamic width axis: the widest tensor."""
    width_multiple: int = Field(default=1, ge=1, le=1024)
    """fit_height with a dynamic width axis: the tensor width is rounded up to a multiple of this."""
    pad_value: float | None = None
    pad_space: PadSpace = "pixel"

    @model_validator(mode="after")
    def _consistent(self) -> InputSpec:
        channels = self.shape[1] if self.layout == "NCHW" else self.shape[3]
        expected = 1 if self.colour == "GRAY" else 3
        if channels is not None and channels != expected:
            raise ValueError(f"colour {self.colour} needs {expected} channel(s), the shape has {channels}")
        for name, values in (("mean", self.mean), ("std", self.std)):
            if len(values) not in (1, expected):
                raise ValueError(f"{name} needs 1 or {expected} values, got {len(values)}")
        if any(s == 0 for s in self.std):
            raise ValueError("std may not contain 0")
        self._check_fit_height()
        self._check_padding()
        return self

    def _check_fit_height(self) -> None:
        if self.resize != "fit_height":
            for name in ("max_width", "width_multiple"):
                if name in self.model_fields_set:
                    raise ValueError(f"{name} is for resize fit_height, not {self.resize}")
            return
        if self.height is None:
            raise ValueError("resize fit_height needs a fixed height in the shape")
        if self.width is not None:
            if self.max_width is not None and self.max_width != self.width:
                raise ValueError(f"max_width {self.max_width} differs from the shape's fixed width {self.width}")
            if "width_multiple" in self.model_fields_set:
                raise ValueError("width_multiple is for a dynamic width axis; the shape's width is fixed")
        elif self.max_width is None:
            raise ValueError("resize fit_height with a dynamic width axis needs max_width")

    def _check_padding(self) -> None:
        if self.pad_value is None:
            if "pad_space" in self.model_fields_set:
                raise ValueError("pad_space needs pad_value")
            return
        if self.resize == "stretch":
            raise ValueError("resize stretch does not pad; pad_value is for letterbox and fit_height")
        if not math.isfinite(self.pad_value):
            return  # refused by the caller's finiteness check, naming the field
        if self.pad_space == "pixel":
            if not (0 <= self.pad_value <= 255 and self.pad_value == int(self.pad_value)):
                raise ValueError(f"a pixel pad_value is an integer from 0 to 255, got {self.pad_value}")
        else:
            if self.dtype == "uint8":
                raise ValueError("pad_space normalised needs dtype float32; a uint8 input is not normalised")
            if abs(self.pad_value) > MAX_NORMALISED_PAD:
                raise ValueError(
                    f"a normalised pad_value is at most {MAX_NORMALISED_PAD:g} from 0, got {self.pad_value}"
                )

    @model_serializer(mode="wrap")
    def _without_unset_options(self, handler: SerializerFunctionWrapHandler) -> Any:
        data = handler(self)
        if isinstance(data, dict):
            for name in _OPTIONAL_FIELDS:
                if name in data and getattr(self, name) == type(self).model_fields[name].default:
                    del data[name]
        return data

    @property
    def height(self) -> int | None:
        return self.shape[2] if self.layout == "NCHW" else self.shape[1]

    @property
    def width(self) -> int | None:
        return self.shape[3] if self.layout == "NCHW" else self.shape[2]

    @property
    def padding(self) -> tuple[float, PadSpace]:
        """The pad value and its space, the mode's reference default when none is given."""
        if self.pad_value is not None:
            return self.pad_value, self.pad_space
        if self.resize == "fit_height":
            # PaddleOCR pads the normalised tensor with 0; a uint8 tensor's 0 is pixel 0.
            return 0.0, "normalised" if self.dtype == "float32" else "pixel"
        return LETTERBOX_PAD, "pixel"


class ClassificationOutput(_Spec):
    """One output of shape (batch, classes): logits or probabilities."""

    kind: Literal["classification"] = "classification"
    output: Annotated[str, Field(min_length=1, max_length=200)]
    softmax: bool = True
    top_k: int = Field(default=3, ge=1, le=100)


class DetectionOutput(_Spec):
    """YOLO-style output of shape (batch, boxes, 5 + classes).

    Each row is ``cx, cy, w, h`` in input pixels, an objectness score, then one
    score per class; a box's confidence is objectness times its best class score.
    """

    kind: Literal["detection"] = "detection"
    output: Annotated[str, Field(min_length=1, max_length=200)]
    format: Literal["yolo"] = "yolo"
    iou_threshold: float = Field(default=0.45, gt=0, le=1)
    score_threshold: float = Field(default=0.25, ge=0, le=1)
    max_detections: int = Field(default=100, ge=1, le=1000)


OutputDecoding = Annotated[ClassificationOutput | DetectionOutput, Field(discriminator="kind")]


class Thresholds(_Spec):
    """Defaults a device applies unless its desired state overrides them."""

    escalate_below: float = Field(default=0.6, ge=0, le=1)
    """A result whose confidence is below this is escalated to the cloud."""
    act_above: float = Field(default=0.8, ge=0, le=1)
    """Local actions fire only for results at least this confident."""

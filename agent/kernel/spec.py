"""How a model is fed and read: the input spec and output decoding of a bundle.

Shared by the registry (which checks a published model against its graph and
writes these into the signed manifest) and the agent (which pre-processes
frames and decodes outputs from them). Django-free.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Task = Literal["classification", "detection"]
Label = Annotated[str, Field(min_length=1, max_length=100)]


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class InputSpec(_Spec):
    """The model's single image input.

    ``shape`` is in ``layout`` order with the batch first; ``None`` (or a
    negative number in the ONNX graph) marks a dynamic dimension. Pixels are
    read as ``colour`` order, resized by ``resize``, then converted as
    ``(pixel * scale - mean) / std`` per channel when ``dtype`` is float32.
    """

    name: Annotated[str, Field(min_length=1, max_length=200)]
    shape: Annotated[list[int | None], Field(min_length=4, max_length=4)]
    layout: Literal["NCHW", "NHWC"] = "NCHW"
    dtype: Literal["float32", "uint8"] = "float32"
    colour: Literal["RGB", "BGR", "GRAY"] = "RGB"
    resize: Literal["stretch", "letterbox"] = "stretch"
    scale: float = Field(default=1.0 / 255.0, gt=0)
    mean: Annotated[list[float], Field(min_length=1, max_length=3)] = [0.0]
    std: Annotated[list[float], Field(min_length=1, max_length=3)] = [1.0]

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
        return self

    @property
    def height(self) -> int | None:
        return self.shape[2] if self.layout == "NCHW" else self.shape[1]

    @property
    def width(self) -> int | None:
        return self.shape[3] if self.layout == "NCHW" else self.shape[2]


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

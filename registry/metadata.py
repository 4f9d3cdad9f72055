"""The metadata JSON of a publish request. Django-free: the ``edgefleet`` CLI checks it before uploading."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from agent.kernel import histogram
from agent.kernel.manifest import parse_version
from agent.kernel.spec import InputSpec, OutputDecoding, Task, Thresholds


class Tolerance(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    atol: float = Field(default=1e-3, ge=0, le=1e3)
    rtol: float = Field(default=1e-3, ge=0, le=1)


class PublishProvenance(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    git_commit: Annotated[str, Field(max_length=64)] | None = None
    ci_run: Annotated[str, Field(max_length=500)] | None = None
    source: Annotated[str, Field(max_length=500)] | None = None


class ReferenceDistribution(BaseModel):
    """What CI measured on its evaluation set: the drift baseline of the version until the field has its own.

    Drift needs a baseline of at least ``telemetry.drift.MIN_FRAMES`` frames to
    tell a shift from sampling noise, far more than the reference images a
    publish uploads, so CI sends the counts it measured on its held-out set.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    confidence: list[Annotated[int, Field(ge=0)]] = Field(
        min_length=histogram.CONFIDENCE_BINS, max_length=histogram.CONFIDENCE_BINS
    )
    """Counts per confidence bin, with the edges of ``agent.kernel.histogram``."""
    classes: dict[Annotated[str, Field(max_length=100)], Annotated[int, Field(ge=0)]] = Field(
        default_factory=dict, max_length=10_000
    )
    """Top-1 label counts over the same frames."""


class PublishMetadata(BaseModel):
    """Everything about a version except its files."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: str
    task: Task
    role: Literal["edge", "cloud"] = "edge"
    labels: list[Annotated[str, Field(min_length=1, max_length=100)]] = Field(min_length=1, max_length=10_000)
    input: InputSpec
    output: OutputDecoding
    thresholds: Thresholds = Thresholds()
    metrics: dict[Annotated[str, Field(max_length=100)], float] = Field(default_factory=dict, max_length=100)
    provenance: PublishProvenance = PublishProvenance()
    min_agent_version: str | None = None
    tolerance: Tolerance = Tolerance()
    reference_count: int = Field(default=4, ge=1, le=64)
    """How many inputs to generate when no reference images are uploaded."""
    expires_in_days: int | None = Field(default=None, ge=1, le=3650)
    description: Annotated[str, Field(max_length=2000)] = ""
    quantize: bool = False
    """Also build a ``cpu-int8`` bundle, calibrated on the reference inputs."""
    reference_distribution: ReferenceDistribution | None = None
    """Classification only: confidence and class counts CI measured, the version's drift baseline."""

    @field_validator("version", "min_agent_version")
    @classmethod
    def _semantic(cls, value: str | None) -> str | None:
        if value is not None:
            parse_version(value)
        return value

    @model_validator(mode="after")
    def _consistent(self) -> PublishMetadata:
        if self.output.kind != self.task:
            raise ValueError(f"output decoding {self.output.kind!r} does not match task {self.task!r}")
        if len(set(self.labels)) != len(self.labels):
            raise ValueError("labels must be unique")
        reference = self.reference_distribution
        if reference is not None:
            if self.task != "classification":
                raise ValueError("reference_distribution is for classification models")
            unknown = sorted(set(reference.classes) - set(self.labels))
            if unknown:
                raise ValueError(f"reference_distribution.classes names unknown labels: {', '.join(unknown[:5])}")
        return self

    def content(self) -> dict[str, object]:
        """What identifies the version's content: all but the request to quantise."""
        return self.model_dump(mode="json", exclude={"quantize"})


def parse_metadata(text: str | bytes) -> PublishMetadata:
    """Parse metadata JSON; raises ValueError with the first problem, field first.

    NaN and Infinity (and numbers too large for a float) are refused: JSON has
    no such values and the database stores none.
    """
    try:
        metadata = PublishMetadata.model_validate_json(text)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "metadata"
        # A check across fields (a model validator) reads "Value error, ..."; the field and the reason suffice.
        message = str(first["msg"]).removeprefix("Value error, ")
        raise ValueError(f"{where}: {message}") from None
    path = _non_finite(metadata.model_dump(), ())
    if path is not None:
        raise ValueError(f"{'.'.join(path) or 'metadata'}: Input should be a finite number")
    return metadata


def _non_finite(value: object, path: tuple[str, ...]) -> tuple[str, ...] | None:
    """Where the first NaN or infinity in ``value`` is, or None."""
    if isinstance(value, float):
        return None if math.isfinite(value) else path
    items: Iterable[tuple[object, object]]
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list | tuple):
        items = enumerate(value)
    else:
        return None
    for key, item in items:
        found = _non_finite(item, (*path, str(key)))
        if found is not None:
            return found
    return None

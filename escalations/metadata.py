"""The ``metadata`` part of an escalation upload, read strictly: one way in, ``parse()``.

Django-free. Every bound is here, where the device's JSON enters: text
lengths, finite numbers, capture times PostgreSQL and Python can hold and
that are plausible (years 2000 to 2100 in UTC), and the edge result's size
and nesting, so nothing the database or ``json.dumps`` chokes on (NaN, an
infinity, a NUL in text, a 2**64 integer read back as a float) gets past it.
A refusal is a ``ServiceError`` 400 ``invalid`` naming the field.
"""

from __future__ import annotations

import json
import math
from datetime import datetime, timezone
from typing import Annotated, Any, Literal, NoReturn

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictInt,
    StrictStr,
    ValidationError,
    field_validator,
)

from core.errors import ServiceError

MAX_METADATA_BYTES = 64 * 1024
MAX_RESULT_DEPTH = 8
MAX_RESULT_NODES = 5000
MAX_TEXT = 1000
# Integers beyond 2**53 do not survive a round trip through a JSON float (PostgreSQL jsonb, JavaScript).
MAX_INT = 2**53
MAX_CROP = 65535
EARLIEST_YEAR, LATEST_YEAR = 2000, 2100


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("a number is required")
    try:
        return float(value)
    except OverflowError:
        raise ValueError("the number is out of range") from None


Number = Annotated[float, BeforeValidator(_number)]
NO_NUL = r"^[^\x00]+$"
Name = Annotated[StrictStr, Field(min_length=1, max_length=63, pattern=NO_NUL)]
Text = Annotated[StrictStr, Field(min_length=1, max_length=64, pattern=NO_NUL)]


class Metadata(BaseModel):
    """What the agent sends with a frame (agent/escalation.py ``_write``), plus ``crop`` from crop sites."""

    # Keys a newer agent adds are ignored, not refused: a refusal is permanent and the device drops the frame.
    model_config = ConfigDict(extra="ignore", frozen=True)

    device_id: Text
    ts: datetime
    model_name: Name
    model_version: Text
    threshold: Annotated[Number, Field(ge=0.0, le=1.0, allow_inf_nan=False)]
    frame: Annotated[StrictStr, Field(min_length=1, max_length=200)]
    result: dict[str, Any]
    crop: tuple[StrictInt, StrictInt, StrictInt, StrictInt] | None = None
    # Why the device sent it: unsure (below its threshold) or a fallback sample of its confident frames, taken
    # with probability sample_rate (agents before fallback sampling send neither: unsure, 1).
    reason: Literal["unsure", "fallback"] = "unsure"
    sample_rate: Annotated[Number, Field(gt=0.0, le=1.0, allow_inf_nan=False)] = 1.0

    @field_validator("ts", mode="before")
    @classmethod
    def _capture_time(cls, value: Any) -> datetime:
        if not isinstance(value, str) or len(value) > 40:
            raise ValueError("an ISO 8601 date-time with a UTC offset")
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            raise ValueError("an ISO 8601 date-time with a UTC offset") from None
        offset = parsed.utcoffset()
        if offset is None:
            raise ValueError("the date-time needs a UTC offset (e.g. +00:00)")
        try:
            utc = parsed.astimezone(timezone.utc)
        except OverflowError:
            raise ValueError(f"the capture time must fall within the years {EARLIEST_YEAR} to {LATEST_YEAR}") from None
        if not EARLIEST_YEAR <= utc.year <= LATEST_YEAR:
            raise ValueError(f"the capture time must fall within the years {EARLIEST_YEAR} to {LATEST_YEAR}")
        return utc

    @field_validator("frame")
    @classmethod
    def _frame_name(cls, value: str) -> str:
        if any(c in value for c in "\x00/\\"):
            raise ValueError("the frame id may not hold a null character, / or \\")
        return value

    @field_validator("result")
    @classmethod
    def _bounded_result(cls, value: dict[str, Any]) -> dict[str, Any]:
        _check_tree(value)
        label = value.get("label")
        if label is not None and not (isinstance(label, str) and 0 < len(label) <= 200):
            raise ValueError("result.label must be a text of 1 to 200 characters or null")
        confidence = value.get("confidence")
        if isinstance(confidence, bool) or not isinstance(confidence, int | float) or not 0.0 <= confidence <= 1.0:
            raise ValueError("result.confidence must be a number from 0 to 1")
        return value

    @field_validator("crop")
    @classmethod
    def _crop_box(cls, value: tuple[int, int, int, int] | None) -> tuple[int, int, int, int] | None:
        if value is None:
            return None
        x, y, w, h = value
        if min(x, y) < 0 or min(w, h) < 1 or max(x + w, y + h) > MAX_CROP:
            raise ValueError(f"crop is [x, y, w, h]: x, y at least 0, w, h at least 1, within {MAX_CROP} pixels")
        return value

    @property
    def label(self) -> str:
        return str(self.result.get("label") or "")

    @property
    def confidence(self) -> float:
        return float(self.result["confidence"])


def _check_tree(root: Any) -> None:
    """Refuse a result PostgreSQL's jsonb cannot hold or that is too large to be an edge result."""
    nodes = 0
    stack: list[tuple[Any, int]] = [(root, 1)]
    while stack:
        value, depth = stack.pop()
        nodes += 1
        if nodes > MAX_RESULT_NODES:
            raise ValueError(f"result holds more than {MAX_RESULT_NODES} values")
        if isinstance(value, dict | list) and depth > MAX_RESULT_DEPTH:
            raise ValueError(f"result is nested deeper than {MAX_RESULT_DEPTH} levels")
        if isinstance(value, dict):
            for key, inner in value.items():
                _check_string(key)
                stack.append((inner, depth + 1))
        elif isinstance(value, list):
            stack.extend((inner, depth + 1) for inner in value)
        elif isinstance(value, str):
            _check_string(value)
        elif isinstance(value, bool) or value is None:
            continue
        elif isinstance(value, int):
            if abs(value) > MAX_INT:
                raise ValueError(f"result holds an integer beyond ±2**53: {value}"[:120])
        elif isinstance(value, float):
            if not math.isfinite(value):
                raise ValueError("result holds a number that is not finite")
        else:  # pragma: no cover - json.loads makes nothing else
            raise ValueError("result holds a value JSON cannot carry")


def _check_string(text: str) -> None:
    if len(text) > MAX_TEXT:
        raise ValueError(f"result holds a text longer than {MAX_TEXT} characters")
    if "\x00" in text:
        raise ValueError("result holds a null character")


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def parse(raw: bytes | str) -> Metadata:
    """The upload's metadata, or a ``ServiceError`` 400 ``invalid`` naming the field at fault."""
    if len(raw) > MAX_METADATA_BYTES:
        _refuse("metadata", f"The metadata is larger than {MAX_METADATA_BYTES} bytes.")
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        # parse_constant: Python's json reads NaN and Infinity, which JSON does not have.
        document = json.loads(text, parse_constant=_refuse_constant)
    except RecursionError:
        _refuse("metadata.result", f"The result is nested deeper than {MAX_RESULT_DEPTH} levels.")
    except ValueError as exc:  # UnicodeDecodeError and JSONDecodeError included
        _refuse("metadata", f"The metadata is not JSON: {exc}"[:300])
    if not isinstance(document, dict):
        _refuse("metadata", "The metadata must be a JSON object.")
    try:
        return Metadata.model_validate(document)
    except ValidationError as exc:
        fields: dict[str, list[str]] = {}
        for error in exc.errors(include_url=False, include_input=False):
            name = ".".join(["metadata", *(str(part) for part in error["loc"])])
            fields.setdefault(name, []).append(str(error["msg"]).removeprefix("Value error, "))
        detail = " ".join(f"{name}: {messages[0]}." for name, messages in fields.items())
        raise ServiceError("invalid", detail, 400, fields=fields) from None


def _refuse(field: str, message: str) -> NoReturn:
    raise ServiceError("invalid", message, 400, fields={field: [message]})

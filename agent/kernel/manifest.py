"""Model bundle manifest v1: what a signed bundle promises (DESIGN.md, "Model bundle v1").

The registry writes it and the agent reads it, so it lives here, Django-free.
``manifest.json`` in a bundle holds exactly ``canonical_bytes(manifest)``, and
``manifest.sig`` signs those bytes; a verifier checks the signature over the
bytes it read before it parses them, never over a re-serialisation.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from agent.kernel.spec import InputSpec, OutputDecoding, Task, Thresholds

FORMAT_ID = "edgefleet.bundle/v1"
MANIFEST_NAME = "manifest.json"
SIGNATURE_NAME = "manifest.sig"
MODEL_NAME = "model.onnx"

# Bundle member names: relative, forward slashes, no dot segments. Anything
# else is refused by the manifest and by the archive reader alike.
_SAFE_PATH = re.compile(r"^(?!.*(^|/)\.{1,2}(/|$))[A-Za-z0-9_][A-Za-z0-9_.-]*(/[A-Za-z0-9_][A-Za-z0-9_.-]*)*$")
_SEMVER = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-([0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?(?:\+[0-9A-Za-z.-]+)?$"
)

Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
Name = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")]
Target = Annotated[str, Field(pattern=r"^[a-z0-9]+-[a-z0-9]+$", max_length=32)]


class ManifestError(ValueError):
    """Manifest bytes that are not a valid manifest v1."""


def is_safe_path(path: str) -> bool:
    return len(path) <= 200 and bool(_SAFE_PATH.match(path))


def parse_version(text: str) -> tuple[int, int, int, tuple[tuple[int, int | str], ...]]:
    """A semantic version as a sortable key; a pre-release sorts before its release.

    Raises ValueError for anything that is not ``MAJOR.MINOR.PATCH[-pre][+build]``.
    """
    match = _SEMVER.match(text)
    if match is None:
        raise ValueError(f"{text!r} is not a semantic version (MAJOR.MINOR.PATCH)")
    major, minor, patch, pre = match.groups()
    # Release > any pre-release; numeric identifiers < alphanumeric ones (semver 11.4).
    pre_key: tuple[tuple[int, int | str], ...] = (
        tuple((0, int(p)) if p.isdigit() else (1, p) for p in pre.split(".")) if pre else ((2, 0),)
    )
    return int(major), int(minor), int(patch), pre_key


def _semver(value: str) -> str:
    parse_version(value)
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FileEntry(_Strict):
    path: str
    sha256: Sha256
    size: int = Field(ge=0)

    @field_validator("path")
    @classmethod
    def _safe(cls, value: str) -> str:
        if not is_safe_path(value) or value in (MANIFEST_NAME, SIGNATURE_NAME):
            raise ValueError(f"unsafe or reserved file path {value!r}")
        return value


class ReferenceCase(_Strict):
    """A pre-processed input tensor and the outputs the model must reproduce.

    Both are ``.npy`` files listed in ``files``; a device passes the case when
    every output is within ``atol + rtol * |expected|`` of the expected one.
    """

    input: str
    expected: list[str] = Field(min_length=1)
    atol: float = Field(default=1e-3, ge=0)
    rtol: float = Field(default=1e-3, ge=0)
    top1: int | None = None
    """For classifiers, the expected best class (a second, robust check)."""


class Provenance(_Strict):
    git_commit: Annotated[str, Field(max_length=64)] | None = None
    ci_run: Annotated[str, Field(max_length=500)] | None = None
    published_by: Annotated[str, Field(max_length=150)] | None = None
    source: Annotated[str, Field(max_length=500)] | None = None
    metrics: dict[str, float] = Field(default_factory=dict)


class Manifest(_Strict):
    format: Literal["edgefleet.bundle/v1"] = "edgefleet.bundle/v1"
    model: Name
    version: str
    sequence: int = Field(ge=1)
    task: Task
    target: Target = "cpu-fp32"
    files: list[FileEntry] = Field(min_length=1, max_length=1000)
    input: InputSpec
    output: OutputDecoding
    labels: list[Annotated[str, Field(min_length=1, max_length=100)]] = Field(min_length=1, max_length=10_000)
    thresholds: Thresholds = Thresholds()
    references: list[ReferenceCase] = Field(default_factory=list, max_length=100)
    min_agent_version: str = "0.1.0"
    created_at: datetime
    expires_at: datetime
    provenance: Provenance = Provenance()
    quantization: dict[str, Any] | None = None

    @field_validator("version", "min_agent_version")
    @classmethod
    def _semantic(cls, value: str) -> str:
        return _semver(value)

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        paths = [f.path for f in self.files]
        if len(set(paths)) != len(paths):
            raise ValueError("a file is listed twice")
        if MODEL_NAME not in paths:
            raise ValueError(f"{MODEL_NAME} is not listed in files")
        for case in self.references:
            for path in (case.input, *case.expected):
                if path not in paths:
                    raise ValueError(f"reference file {path!r} is not listed in files")
        if self.output.kind != self.task:
            raise ValueError(f"output decoding {self.output.kind!r} does not match task {self.task!r}")
        if self.expires_at.tzinfo is None or self.created_at.tzinfo is None:
            raise ValueError("created_at and expires_at need a time zone")
        if self.expires_at <= self.created_at:
            raise ValueError("expires_at must be after created_at")
        return self

    def file(self, path: str) -> FileEntry:
        for entry in self.files:
            if entry.path == path:
                return entry
        raise KeyError(path)


def canonical_json(document: Any) -> bytes:
    """The one byte form of a JSON document that gets signed: sorted keys, no spaces, UTF-8."""
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def canonical_bytes(manifest: Manifest) -> bytes:
    return canonical_json(manifest.model_dump(mode="json"))


def parse_manifest(data: bytes) -> Manifest:
    """Parse manifest bytes (already authenticated by their signature); raises ManifestError."""
    try:
        document = json.loads(data)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ManifestError(f"manifest is not JSON: {exc}") from None
    try:
        return Manifest.model_validate(document)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ManifestError(f"manifest {where}: {first['msg']}"[:300]) from None

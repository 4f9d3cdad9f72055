"""Verification of signed bundles, keyring updates and desired documents. Django-free.

A device trusts nothing it downloads until this module says so. The checks
answer the known update attacks (DESIGN.md, "Model bundle v1"): a signature by
a trusted, unretired Ed25519 key over the exact manifest bytes (arbitrary
software), every file bound to the manifest by sha256 and size
(mix-and-match), a monotonic sequence (rollback), an expiry (freeze), size and
count caps while unpacking (endless data, decompression bombs), and no path
that could land outside the unpack folder.

Each failure has its own exception class with a short ``reason`` so the agent
can report it in ``reported.error`` and operators can tell them apart.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import hashlib
import json
import os
import tarfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any, Literal, cast

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agent.kernel import protocol
from agent.kernel.manifest import (
    MANIFEST_NAME,
    SIGNATURE_NAME,
    Manifest,
    ManifestError,
    canonical_json,
    is_safe_path,
    parse_manifest,
    parse_version,
)
from agent.kernel.protocol import Signature

# --- errors -------------------------------------------------------------------


class VerificationError(Exception):
    """Base class: the bundle (or document) must not be used."""

    reason = "invalid"

    def __init__(self, detail: str = "") -> None:
        super().__init__(f"{self.reason}: {detail}" if detail else self.reason)
        self.detail = detail


class UnknownKey(VerificationError):
    reason = "unknown_key"


class KeyRetired(VerificationError):
    reason = "key_retired"


class BadSignature(VerificationError):
    reason = "bad_signature"


class BadManifest(VerificationError):
    reason = "bad_manifest"


class DigestMismatch(VerificationError):
    reason = "digest_mismatch"


class SizeMismatch(VerificationError):
    reason = "size_mismatch"


class MissingFile(VerificationError):
    reason = "missing_file"


class UnexpectedFile(VerificationError):
    reason = "unexpected_file"


class Expired(VerificationError):
    reason = "expired"


class Downgrade(VerificationError):
    reason = "downgrade"


class AgentTooOld(VerificationError):
    reason = "agent_too_old"


class WrongDevice(VerificationError):
    reason = "wrong_device"


class Stale(VerificationError):
    """A desired document not newer than the newest one verified: a replay, or a freeze attempt."""

    reason = "stale"


class UnsafeArchivePath(VerificationError):
    reason = "unsafe_archive_path"


class ArchiveTooLarge(VerificationError):
    reason = "archive_too_large"


class ReferenceMismatch(VerificationError):
    reason = "reference_mismatch"


# --- keys -----------------------------------------------------------------------


def key_id_for(public_key: bytes) -> str:
    """Key ids are derived from the key, so a trust store entry cannot lie about its id."""
    return hashlib.sha256(public_key).hexdigest()[:16]


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class TrustedKey(protocol.TrustStoreEntry):
    """One public signing key of a trust store (as handed out at enrollment), checked before use."""

    def raw(self) -> bytes:
        try:
            data = base64.b64decode(self.public_key, validate=True)
        except (binascii.Error, ValueError):
            raise UnknownKey(f"key {self.key_id} is not base64") from None
        if len(data) != 32 or key_id_for(data) != self.key_id:
            raise UnknownKey(f"key {self.key_id} does not match its id")
        return data

    def usable_at(self, when: datetime) -> bool:
        return self.retired_at is None or when < self.retired_at


def read_signature(data: bytes | Mapping[str, Any]) -> Signature:
    try:
        document = json.loads(data) if isinstance(data, bytes) else data
        return Signature.model_validate(document)
    except (ValueError, ValidationError, RecursionError) as exc:
        raise BadSignature(f"signature document is malformed: {str(exc)[:200]}") from None


@dataclass(frozen=True)
class Keyring:
    """The keys a device trusts, and the sequence of the keyring update that set them."""

    keys: dict[str, TrustedKey] = field(default_factory=dict)
    sequence: int = 0

    @classmethod
    def from_trust_store(cls, entries: list[dict[str, Any]], sequence: int = 0) -> Keyring:
        try:
            keys = [TrustedKey.model_validate(entry) for entry in entries]
        except ValidationError as exc:
            raise UnknownKey(f"trust store entry is malformed: {str(exc)[:200]}") from None
        for key in keys:
            key.raw()
        return cls({k.key_id: k for k in keys}, sequence)

    def to_trust_store(self) -> list[dict[str, Any]]:
        return [k.model_dump(mode="json") for k in self.keys.values()]

    def verify(self, data: bytes, signature: Signature, *, now: datetime | None = None) -> TrustedKey:
        """Check ``signature`` over ``data``; returns the key that made it."""
        key = self.keys.get(signature.key_id)
        if key is None:
            raise UnknownKey(f"key {signature.key_id} is not in the trust store")
        when = now or utcnow()
        if not key.usable_at(when):
            raise KeyRetired(f"key {key.key_id} was retired at {key.retired_at:%Y-%m-%dT%H:%M:%SZ}")
        try:
            raw_sig = base64.b64decode(signature.sig, validate=True)
            Ed25519PublicKey.from_public_bytes(key.raw()).verify(raw_sig, data)
        except (binascii.Error, ValueError, InvalidSignature):
            raise BadSignature(f"signature by key {key.key_id} does not match") from None
        return key


class KeyringDocument(BaseModel):
    """The signed body of a keyring update: the complete new set of trusted keys."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["keyring"] = "keyring"
    sequence: int = Field(ge=1)
    issued_at: datetime
    keys: list[TrustedKey] = Field(min_length=1, max_length=100)


def apply_keyring_update(keyring: Keyring, update: dict[str, Any], *, now: datetime | None = None) -> Keyring:
    """Return the keyring an update ``{"document": ..., "signature": ...}`` establishes.

    The update must be signed by a key the device trusts now (not one it
    introduces), and be newer than the keyring it replaces, so an old update
    cannot be replayed to bring back a retired key.
    """
    if not isinstance(update, dict) or not isinstance(update.get("document"), dict):
        raise BadManifest("keyring update needs a document and a signature")
    signature = read_signature(update.get("signature") or {})
    keyring.verify(canonical_json(update["document"]), signature, now=now)
    try:
        document = KeyringDocument.model_validate(update["document"])
    except ValidationError as exc:
        raise BadManifest(f"keyring document: {str(exc)[:200]}") from None
    if document.sequence <= keyring.sequence:
        raise Downgrade(f"keyring update {document.sequence} is not newer than {keyring.sequence}")
    for key in document.keys:
        key.raw()
    return Keyring({k.key_id: k for k in document.keys}, document.sequence)


# --- desired documents ---------------------------------------------------------


def desired_signing_bytes(message: protocol.Desired) -> bytes:
    """The bytes signed for a desired document: everything but the signature, canonical."""
    return canonical_json(message.model_dump(mode="json", exclude={"signature"}, exclude_none=True))


def verify_desired(message: protocol.Desired, keyring: Keyring, *, now: datetime | None = None) -> TrustedKey:
    """Refuse a desired document the control plane did not sign (a broker cannot forge one)."""
    if message.signature is None:
        raise BadSignature("desired document is not signed")
    return keyring.verify(desired_signing_bytes(message), message.signature, now=now)


def check_desired(
    message: protocol.Desired, *, device_id: str, newest: protocol.Desired | None, now: datetime | None = None
) -> None:
    """Refuse a (signature-checked) desired document this device must not apply.

    It must name this device, be newer than ``newest`` (the newest document this
    device verified: one generation is signed once, so an equal generation with
    other content is refused too), and not have expired by the device's clock.
    """
    if message.device_id != device_id:
        raise WrongDevice(f"the document is for device {message.device_id}, this is {device_id}")
    if newest is not None and message.generation <= newest.generation:
        raise Stale(f"generation {message.generation} is not newer than {newest.generation}")
    now = now or utcnow()
    if message.expires <= now:
        raise Expired(f"the document expired at {message.expires.isoformat()}")


def signed_desired(message: protocol.Desired, sign: Callable[[bytes], Mapping[str, str]]) -> protocol.Desired:
    """``message`` with the signature ``sign`` makes over its signing bytes (the control plane's side)."""
    signature = read_signature(sign(desired_signing_bytes(message)))
    return message.model_copy(update={"signature": signature})


# --- archives ------------------------------------------------------------------


@dataclass(frozen=True)
class Limits:
    max_archive_bytes: int = 512 * 1024 * 1024
    max_unpacked_bytes: int = 1024 * 1024 * 1024
    max_files: int = 256


class _CappedReader:
    """Counts decompressed bytes and stops at the cap: a gzip bomb never reaches the disk."""

    def __init__(self, raw: IO[bytes], cap: int) -> None:
        self._raw, self._cap, self.count = raw, cap, 0

    def read(self, size: int = -1) -> bytes:
        chunk = self._raw.read(size if size >= 0 else self._cap + 1 - self.count)
        self.count += len(chunk)
        if self.count > self._cap:
            raise ArchiveTooLarge(f"unpacks to more than {self._cap} bytes")
        return chunk


@dataclass(frozen=True)
class ExtractedFile:
    sha256: str
    size: int


def extract_bundle(archive: Path, dest: Path, limits: Limits = Limits()) -> dict[str, ExtractedFile]:
    """Unpack a bundle (tar, optionally gzip) into the new folder ``dest``, refusing anything unsafe.

    Only regular files with safe relative names are written, each created
    exclusively (a name cannot be written twice or followed through a link);
    returns each file's sha256 and size as written.
    """
    size = archive.stat().st_size
    if size > limits.max_archive_bytes:
        raise ArchiveTooLarge(f"archive is {size} bytes, the limit is {limits.max_archive_bytes}")
    dest.mkdir(parents=True, exist_ok=False)
    # Tar headers and padding on top of the payload: 3 blocks per member plus the end records.
    stream_cap = limits.max_unpacked_bytes + 1536 * (limits.max_files + 2) + 20480
    written: dict[str, ExtractedFile] = {}
    unpacked = 0
    with archive.open("rb") as raw:
        magic = raw.read(2)
        raw.seek(0)
        source = cast(IO[bytes], gzip.GzipFile(fileobj=raw, mode="rb") if magic == b"\x1f\x8b" else raw)
        capped = _CappedReader(source, stream_cap)
        try:
            with tarfile.open(fileobj=capped, mode="r|") as tar:  # type: ignore[call-overload]
                for member in tar:
                    if member.isdir():
                        continue
                    if member.issym() or member.islnk():
                        raise UnsafeArchivePath(f"{member.name!r} is a link")
                    if not member.isreg():
                        raise UnsafeArchivePath(f"{member.name!r} is not a regular file")
                    if not is_safe_path(member.name):
                        raise UnsafeArchivePath(f"{member.name!r} is not a safe relative path")
                    if member.name in written:
                        raise UnsafeArchivePath(f"{member.name!r} appears twice")
                    if len(written) >= limits.max_files:
                        raise ArchiveTooLarge(f"more than {limits.max_files} files")
                    unpacked += member.size
                    if unpacked > limits.max_unpacked_bytes:
                        raise ArchiveTooLarge(f"unpacks to more than {limits.max_unpacked_bytes} bytes")
                    written[member.name] = _write_member(tar, member, dest)
        except (tarfile.TarError, EOFError, OSError, gzip.BadGzipFile) as exc:
            raise BadManifest(f"archive is not a readable tar: {exc}") from None
    return written


def _write_member(tar: tarfile.TarFile, member: tarfile.TarInfo, dest: Path) -> ExtractedFile:
    target = dest.joinpath(*member.name.split("/"))
    target.parent.mkdir(parents=True, exist_ok=True)
    source = tar.extractfile(member)
    if source is None:
        raise UnsafeArchivePath(f"{member.name!r} has no content")
    digest = hashlib.sha256()
    size = 0
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
    with os.fdopen(fd, "wb") as out:
        while chunk := source.read(1024 * 1024):
            digest.update(chunk)
            size += len(chunk)
            out.write(chunk)
        out.flush()
        os.fsync(out.fileno())
    return ExtractedFile(digest.hexdigest(), size)


# --- bundles -------------------------------------------------------------------


@dataclass(frozen=True)
class VerifiedBundle:
    manifest: Manifest
    directory: Path
    key_id: str
    manifest_sha256: str


def verify_bundle(
    archive: Path,
    dest: Path,
    keyring: Keyring,
    *,
    agent_version: str,
    installed_sequence: int | None = None,
    allowed_rollback: str | None = None,
    now: datetime | None = None,
    limits: Limits = Limits(),
) -> VerifiedBundle:
    """Unpack ``archive`` into ``dest`` and check everything the manifest promises.

    ``installed_sequence`` is the sequence of the model the device runs now;
    an older or equal one is a downgrade unless ``allowed_rollback`` names this
    exact version (the device got it from a signed desired document).
    The caller deletes ``dest`` when this raises.
    """
    when = now or utcnow()
    files = extract_bundle(archive, dest, limits)
    for name in (MANIFEST_NAME, SIGNATURE_NAME):
        if name not in files:
            raise MissingFile(f"{name} is not in the bundle")
    manifest_bytes = (dest / MANIFEST_NAME).read_bytes()
    signature = read_signature((dest / SIGNATURE_NAME).read_bytes())
    key = keyring.verify(manifest_bytes, signature, now=when)
    try:
        manifest = parse_manifest(manifest_bytes)
    except ManifestError as exc:
        raise BadManifest(str(exc)) from None
    if when >= manifest.expires_at:
        raise Expired(f"the bundle expired at {manifest.expires_at:%Y-%m-%dT%H:%M:%SZ}")
    try:
        too_old = parse_version(agent_version) < parse_version(manifest.min_agent_version)
    except ValueError as exc:
        raise AgentTooOld(str(exc)) from None
    if too_old:
        raise AgentTooOld(f"agent {agent_version} < required {manifest.min_agent_version}")
    if installed_sequence is not None and manifest.sequence <= installed_sequence:
        if allowed_rollback != manifest.version:
            raise Downgrade(f"sequence {manifest.sequence} is not newer than installed {installed_sequence}")
    for entry in manifest.files:
        got = files.get(entry.path)
        if got is None:
            raise MissingFile(f"{entry.path} is listed but not in the bundle")
        if got.size != entry.size:
            raise SizeMismatch(f"{entry.path} is {got.size} bytes, the manifest says {entry.size}")
        if got.sha256 != entry.sha256:
            raise DigestMismatch(f"{entry.path} does not match its sha256")
    listed = {entry.path for entry in manifest.files} | {MANIFEST_NAME, SIGNATURE_NAME}
    extra = sorted(set(files) - listed)
    if extra:
        raise UnexpectedFile(f"{extra[0]} is not listed in the manifest")
    return VerifiedBundle(manifest, dest, key.key_id, hashlib.sha256(manifest_bytes).hexdigest())


def check_references(bundle: VerifiedBundle, *, threads: int = 1) -> int:
    """Load the model and reproduce every reference output within tolerance; returns the case count."""
    import numpy as np
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    try:
        session = ort.InferenceSession(
            str(bundle.directory / "model.onnx"), sess_options=options, providers=["CPUExecutionProvider"]
        )
    except Exception as exc:  # onnxruntime raises its own untyped errors for a bad graph
        raise ReferenceMismatch(f"the model does not load: {str(exc)[:200]}") from None
    for case in bundle.manifest.references:
        tensor = np.load(bundle.directory / case.input, allow_pickle=False)
        results = session.run(None, {bundle.manifest.input.name: tensor})
        if len(results) != len(case.expected):
            raise ReferenceMismatch(f"{case.input}: {len(results)} outputs, {len(case.expected)} expected")
        for path, result in zip(case.expected, results, strict=True):
            expected = np.load(bundle.directory / path, allow_pickle=False)
            if expected.shape != np.shape(result) or not np.allclose(result, expected, atol=case.atol, rtol=case.rtol):
                raise ReferenceMismatch(f"{case.input}: output differs from {path}")
        if case.top1 is not None and int(np.argmax(results[0].reshape(-1))) != case.top1:
            raise ReferenceMismatch(f"{case.input}: top-1 is not class {case.top1}")
    return len(bundle.manifest.references)

"""Signing and packing bundles. Django-free, so tests and tools can craft bundles too.

The archive layout is the one ``agent.kernel.verify.extract_bundle`` reads: a gzip'd
tar of plain files with fixed metadata (owner, mode, time), so the same
manifest and files always give the same bytes.
"""

from __future__ import annotations

import base64
import gzip
import io
import tarfile
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from agent.kernel.manifest import MANIFEST_NAME, SIGNATURE_NAME, Manifest, canonical_bytes, canonical_json
from agent.kernel.verify import key_id_for


@dataclass(frozen=True)
class Signer:
    """A private key and the id devices know its public half by."""

    private_key: Ed25519PrivateKey

    @property
    def public_bytes(self) -> bytes:
        return self.private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    @property
    def key_id(self) -> str:
        return key_id_for(self.public_bytes)

    def sign(self, data: bytes) -> dict[str, str]:
        """A detached signature document (the content of ``manifest.sig``)."""
        signature = base64.b64encode(self.private_key.sign(data)).decode()
        return {"alg": "ed25519", "key_id": self.key_id, "sig": signature}

    def sign_document(self, document: Any) -> dict[str, str]:
        return self.sign(canonical_json(document))


def pack(members: dict[str, bytes]) -> bytes:
    """A deterministic gzip'd tar of ``members`` in the given order."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    # mtime=0 keeps the gzip header free of the packing time.
    return gzip.compress(raw.getvalue(), compresslevel=6, mtime=0)


def build_bundle(manifest: Manifest, files: dict[str, bytes], signer: Signer) -> tuple[bytes, bytes]:
    """Sign ``manifest`` and pack it with ``files``; returns (archive, manifest bytes)."""
    manifest_bytes = canonical_bytes(manifest)
    signature = canonical_json(signer.sign(manifest_bytes))
    members = {MANIFEST_NAME: manifest_bytes, SIGNATURE_NAME: signature}
    for entry in manifest.files:
        members[entry.path] = files[entry.path]
    return pack(members), manifest_bytes

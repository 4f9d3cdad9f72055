"""Bundle verification as the agent runs it (agent/kernel/verify.py), against bundles crafted in the test."""

from __future__ import annotations

import gzip
import io
import json
import tarfile
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.kernel import verify
from agent.kernel.manifest import MANIFEST_NAME
from registry.bundles import Signer, pack
from tests.registry.conftest import Crafted, trusted

AGENT = "1.0.0"


def check(path: Path, keyring: verify.Keyring, tmp_path: Path, **kwargs: object) -> verify.VerifiedBundle:
    options: dict[str, object] = {"agent_version": AGENT}
    options.update(kwargs)
    return verify.verify_bundle(path, tmp_path / "unpacked", keyring, **options)  # type: ignore[arg-type]


def raw_tar(*members: tarfile.TarInfo, data: bytes = b"x") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for member in members:
            if member.isreg():
                member.size = len(data)
                tar.addfile(member, io.BytesIO(data))
            else:
                tar.addfile(member)
    return gzip.compress(buffer.getvalue())


def test_it_accepts_a_well_formed_bundle_and_reproduces_its_references(crafted, signer, keyring, tmp_path):
    checked = check(crafted.pack(signer, tmp_path), keyring, tmp_path)

    assert checked.manifest.version == "1.2.0"
    assert checked.key_id == signer.key_id
    assert verify.check_references(checked) == 1


def test_it_rejects_a_model_with_one_byte_flipped(crafted, signer, keyring, tmp_path):
    model = bytearray(crafted.files["model.onnx"])
    model[len(model) // 2] ^= 0x01
    path = crafted.pack(signer, tmp_path, files={**crafted.files, "model.onnx": bytes(model)})

    with pytest.raises(verify.DigestMismatch):
        check(path, keyring, tmp_path)


def test_it_rejects_a_model_of_another_size(crafted, signer, keyring, tmp_path):
    path = crafted.pack(signer, tmp_path, files={**crafted.files, "model.onnx": crafted.files["model.onnx"] + b"\0"})

    with pytest.raises(verify.SizeMismatch):
        check(path, keyring, tmp_path)


def test_it_rejects_an_edited_manifest(crafted, signer, keyring, tmp_path):
    original = tarfile.open(crafted.pack(signer, tmp_path))
    members = {m.name: original.extractfile(m).read() for m in original.getmembers()}  # type: ignore[union-attr]
    document = json.loads(members[MANIFEST_NAME])
    document["min_agent_version"] = "0.0.1"
    members[MANIFEST_NAME] = json.dumps(document, sort_keys=True, separators=(",", ":")).encode()
    path = tmp_path / "edited.tar.gz"
    path.write_bytes(pack(members))

    with pytest.raises(verify.BadSignature):
        check(path, keyring, tmp_path)


def test_it_rejects_a_bundle_signed_by_an_untrusted_key(crafted, keyring, tmp_path):
    stranger = Signer(Ed25519PrivateKey.generate())

    with pytest.raises(verify.UnknownKey):
        check(crafted.pack(stranger, tmp_path), keyring, tmp_path)


def test_it_rejects_a_replayed_older_sequence(crafted, signer, keyring, tmp_path):
    with pytest.raises(verify.Downgrade):
        check(crafted.pack(signer, tmp_path), keyring, tmp_path, installed_sequence=6)


def test_it_installs_an_older_sequence_the_signed_desired_state_names_for_rollback(crafted, signer, keyring, tmp_path):
    checked = check(crafted.pack(signer, tmp_path), keyring, tmp_path, installed_sequence=6, allowed_rollback="1.2.0")

    assert checked.manifest.sequence == 5


def test_it_rejects_an_expired_bundle(crafted, signer, keyring, tmp_path):
    later = datetime.now(timezone.utc) + timedelta(days=31)

    with pytest.raises(verify.Expired):
        check(crafted.pack(signer, tmp_path), keyring, tmp_path, now=later)


def test_it_rejects_a_bundle_that_needs_a_newer_agent(crafted, signer, keyring, tmp_path):
    crafted.fields["min_agent_version"] = "2.0.0"

    with pytest.raises(verify.AgentTooOld):
        check(crafted.pack(signer, tmp_path), keyring, tmp_path)


def test_it_refuses_a_retired_key_after_its_retirement_date_only(crafted, signer, tmp_path):
    retired_at = datetime.now(timezone.utc) + timedelta(days=2)
    keyring = verify.Keyring.from_trust_store([trusted(signer, retired_at=retired_at.isoformat())])
    path = crafted.pack(signer, tmp_path)

    assert check(path, keyring, tmp_path / "before").key_id == signer.key_id
    with pytest.raises(verify.KeyRetired):
        check(path, keyring, tmp_path / "after", now=retired_at + timedelta(seconds=1))


def test_it_rejects_a_file_the_manifest_does_not_list(crafted, signer, keyring, tmp_path):
    path = crafted.pack(signer, tmp_path, files={**crafted.files, "extra.bin": b"payload"})

    with pytest.raises(verify.UnexpectedFile):
        check(path, keyring, tmp_path)


def test_it_rejects_a_listed_file_that_is_missing(crafted, signer, keyring, tmp_path):
    files = {k: v for k, v in crafted.files.items() if k != "reference/000.output-0.npy"}

    with pytest.raises(verify.MissingFile):
        check(crafted.pack(signer, tmp_path, files=files), keyring, tmp_path)


def test_it_rejects_a_model_that_does_not_reproduce_its_reference_output(crafted, signer, keyring, tmp_path):
    wrong = io.BytesIO()
    np.save(wrong, np.array([[9.0, 9.0, 9.0]], dtype=np.float32))
    crafted.files["reference/000.output-0.npy"] = wrong.getvalue()
    checked = check(crafted.pack(signer, tmp_path), keyring, tmp_path)

    with pytest.raises(verify.ReferenceMismatch):
        verify.check_references(checked)


@pytest.mark.parametrize(
    "member",
    [
        tarfile.TarInfo("../escaped.txt"),
        tarfile.TarInfo("reference/../../escaped.txt"),
        tarfile.TarInfo("/tmp/escaped.txt"),
    ],
    ids=["parent", "nested-parent", "absolute"],
)
def test_it_refuses_archive_paths_outside_the_folder(member, keyring, tmp_path):
    path = tmp_path / "evil.tar.gz"
    path.write_bytes(raw_tar(member))

    with pytest.raises(verify.UnsafeArchivePath):
        check(path, keyring, tmp_path)
    assert not (tmp_path / "escaped.txt").exists()


def _link(name: str, kind: bytes, target: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


@pytest.mark.parametrize(
    "member",
    [
        _link("model.onnx", tarfile.SYMTYPE, "/etc/passwd"),
        _link("model.onnx", tarfile.LNKTYPE, "manifest.json"),
        _link("model.onnx", tarfile.CHRTYPE),
        _link("model.onnx", tarfile.FIFOTYPE),
    ],
    ids=["symlink", "hardlink", "device", "fifo"],
)
def test_it_refuses_links_and_special_files(member, keyring, tmp_path):
    path = tmp_path / "evil.tar.gz"
    path.write_bytes(raw_tar(member))

    with pytest.raises(verify.UnsafeArchivePath):
        check(path, keyring, tmp_path)


def test_it_stops_a_decompression_bomb_before_it_fills_the_disk(keyring, tmp_path):
    # 64 MiB of zeros gzip to ~64 KiB; the device allows 1 MiB unpacked.
    payload = tarfile.TarInfo("model.onnx")
    payload.size = 64 * 1024 * 1024
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.addfile(payload, io.BytesIO(bytes(payload.size)))
    path = tmp_path / "bomb.tar.gz"
    path.write_bytes(gzip.compress(buffer.getvalue(), compresslevel=9))
    assert path.stat().st_size < 256 * 1024

    with pytest.raises(verify.ArchiveTooLarge):
        check(path, keyring, tmp_path, limits=verify.Limits(max_unpacked_bytes=1024 * 1024))
    written = sum(f.stat().st_size for f in (tmp_path / "unpacked").rglob("*") if f.is_file())
    assert written == 0


def test_it_stops_a_bomb_whose_headers_understate_the_stream(keyring, tmp_path):
    # Zeros alone decode as an empty tar; what counts is that the reader stops at the cap.
    path = tmp_path / "zeros.tar.gz"
    path.write_bytes(gzip.compress(bytes(8 * 1024 * 1024), compresslevel=9))

    with pytest.raises((verify.ArchiveTooLarge, verify.MissingFile)):
        check(path, keyring, tmp_path, limits=verify.Limits(max_unpacked_bytes=64 * 1024, max_files=4))


def test_it_refuses_too_many_files_and_an_oversize_archive(crafted, signer, keyring, tmp_path):
    path = crafted.pack(signer, tmp_path)

    with pytest.raises(verify.ArchiveTooLarge):
        check(path, keyring, tmp_path / "a", limits=verify.Limits(max_files=2))
    with pytest.raises(verify.ArchiveTooLarge):
        check(path, keyring, tmp_path / "b", limits=verify.Limits(max_archive_bytes=100))


def test_every_failure_has_its_own_class_and_reason():
    classes = [
        verify.UnknownKey,
        verify.KeyRetired,
        verify.BadSignature,
        verify.DigestMismatch,
        verify.SizeMismatch,
        verify.Expired,
        verify.Downgrade,
        verify.AgentTooOld,
        verify.UnsafeArchivePath,
        verify.ArchiveTooLarge,
        verify.MissingFile,
        verify.UnexpectedFile,
        verify.BadManifest,
        verify.ReferenceMismatch,
    ]
    assert len({c.reason for c in classes}) == len(classes)
    assert all(issubclass(c, verify.VerificationError) for c in classes)


def test_crafted_bundles_are_deterministic(crafted: Crafted, signer, tmp_path):
    first = crafted.pack(signer, tmp_path).read_bytes()

    assert crafted.pack(signer, tmp_path).read_bytes() == first

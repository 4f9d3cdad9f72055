"""The updater converging on signed desired documents, against bundles crafted in the test and served over HTTP."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.kernel.manifest import MANIFEST_NAME
from agent.pipeline import Pipeline
from agent.updater import CURRENT, PREVIOUS, UpdateError, Updater
from registry.bundles import Signer, pack
from tests.agent.conftest import (
    BundleServer,
    ListSource,
    RecordingRuntime,
    desired_for,
    publish,
    serve_rotated_keyring,
    sign,
    trusted,
)
from tests.agent.helpers import desired_doc
from tests.registry.conftest import Crafted

LIMITED = {"updater": {"max_bundle_bytes": 1024 * 1024}}


@pytest.fixture
def config(agent_config_factory: Any, bundle_server: BundleServer, signer: Signer) -> Any:
    return agent_config_factory(server_url=bundle_server.url, trust=[trusted(signer)], **LIMITED)


@pytest.fixture
def runtime(config: Any) -> RecordingRuntime:
    return RecordingRuntime(config)


@pytest.fixture
def updater(config: Any, runtime: RecordingRuntime) -> Any:
    updater = Updater(config)
    updater.start(runtime)
    yield updater
    updater.stop()


@pytest.fixture
def installed(updater: Updater, crafted: Crafted, signer: Signer, bundle_server: BundleServer, tmp_path: Path) -> Any:
    """Version 1.2.0 (sequence 5) installed and serving."""
    updater.converge(publish(crafted, signer, bundle_server, tmp_path, 1))
    assert updater.holder.session.version == "1.2.0"
    return updater


def newer(classifier_onnx: bytes, version: str = "1.3.0", sequence: int = 6, **fields: Any) -> Crafted:
    bundle = Crafted(classifier_onnx)
    bundle.fields.update(version=version, sequence=sequence, **fields)
    return bundle


def serve(server: BundleServer, name: str, archive: bytes) -> str:
    return server.add(name, archive)


def test_it_installs_a_signed_bundle_reporting_each_phase(updater, runtime, crafted, signer, bundle_server, tmp_path):
    assert updater.holder.fallback and runtime.last["fallback"] is True

    updater.converge(publish(crafted, signer, bundle_server, tmp_path, 1))

    assert runtime.phases()[-4:] == ["downloading", "verifying", "validating", "active"]
    assert runtime.last["model_version"] == "1.2.0" and runtime.last["fallback"] is False
    assert runtime.last["error"] is None and runtime.model_version == "1.2.0"
    assert updater.holder.session.version == "1.2.0" and not updater.holder.fallback
    current = updater.store.pointer(CURRENT)
    assert current is not None and (current / "model.onnx").exists()
    assert "model_swap" in runtime.event_kinds()
    assert not list(updater.store.downloads.iterdir()), "the archive is removed once installed"
    frame = np.zeros((48, 64, 3), dtype=np.uint8)
    assert updater.holder.infer(frame).model_version == "1.2.0"


def test_the_same_desired_again_changes_nothing(installed, runtime, crafted, signer, bundle_server, tmp_path):
    desired = publish(crafted, signer, bundle_server, tmp_path, 2)
    before = len(bundle_server.requests)
    installed.converge(desired)
    assert len(bundle_server.requests) == before
    assert runtime.last["phase"] == "active"


def test_a_dropped_download_resumes_where_it_stopped(updater, runtime, crafted, signer, bundle_server, tmp_path):
    desired = publish(crafted, signer, bundle_server, tmp_path, 1)
    bundle_server.cut_after = 1000

    with pytest.raises(UpdateError) as failure:
        updater.converge(desired)
    assert failure.value.retry and runtime.last["phase"] == "failed"
    assert "download_failed" in runtime.last["error"]
    updater.converge(desired)

    ranges = [r for _, r in bundle_server.requests]
    assert ranges[-1] == "bytes=1000-"
    assert updater.holder.session.version == "1.2.0"


def test_a_server_announcing_another_size_is_refused_before_the_first_byte(
    updater, runtime, crafted, signer, bundle_server, tmp_path
):
    desired = publish(crafted, signer, bundle_server, tmp_path, 1)
    assert desired.model is not None
    lying = sign(desired.model_copy(update={"model": desired.model.model_copy(update={"size": 10})}), signer)
    with pytest.raises(UpdateError):
        updater.converge(lying)
    assert "size_mismatch" in runtime.last["error"]
    assert not list(updater.store.downloads.iterdir())


def _raw_tar(name: str, data: bytes) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return gzip.compress(buffer.getvalue(), compresslevel=9)


def _edited_manifest(bundle: Crafted, signer: Signer, tmp_path: Path) -> bytes:
    original = tarfile.open(bundle.pack(signer, tmp_path))
    members = {m.name: original.extractfile(m).read() for m in original.getmembers()}  # type: ignore[union-attr]
    document = json.loads(members[MANIFEST_NAME])
    document["min_agent_version"] = "0.0.1"
    members[MANIFEST_NAME] = json.dumps(document, sort_keys=True, separators=(",", ":")).encode()
    return pack(members)


def _attack(kind: str, classifier_onnx: bytes, signer: Signer, tmp_path: Path) -> tuple[Crafted, bytes]:
    bundle = newer(classifier_onnx)
    if kind == "tampered_model":
        model = bytearray(bundle.files["model.onnx"])
        model[len(model) // 2] ^= 0x01
        return bundle, bundle.pack(signer, tmp_path, files={**bundle.files, "model.onnx": bytes(model)}).read_bytes()
    if kind == "edited_manifest":
        return bundle, _edited_manifest(bundle, signer, tmp_path)
    if kind == "untrusted_key":
        return bundle, bundle.pack(Signer(Ed25519PrivateKey.generate()), tmp_path).read_bytes()
    if kind == "replayed_older_sequence":
        # The desired state names 1.3.0; what arrives is an older, genuinely signed bundle.
        old = newer(classifier_onnx, version="1.1.0", sequence=4)
        return bundle, old.pack(signer, tmp_path).read_bytes()
    if kind == "expired":
        now = datetime.now(timezone.utc)
        bundle.fields.update(created_at=now - timedelta(days=2), expires_at=now - timedelta(days=1))
    elif kind == "traversal_path":
        return bundle, _raw_tar("../escaped.txt", b"x")
    elif kind == "bomb":
        return bundle, _raw_tar("model.onnx", bytes(16 * 1024 * 1024))
    elif kind == "agent_too_old":
        bundle.fields["min_agent_version"] = "9.0.0"
    elif kind == "reference_mismatch":
        wrong = io.BytesIO()
        np.save(wrong, np.array([[9.0, 9.0, 9.0]], dtype=np.float32))
        bundle.files["reference/000.output-0.npy"] = wrong.getvalue()
    elif kind == "output_missing_from_graph":
        bundle.fields["output"] = {"kind": "classification", "output": "no_such_output"}
    return bundle, bundle.pack(signer, tmp_path).read_bytes()


ATTACKS = {
    "tampered_model": "digest_mismatch",
    "edited_manifest": "bad_signature",
    "untrusted_key": "unknown_key",
    "replayed_older_sequence": "downgrade",
    "expired": "expired",
    "traversal_path": "unsafe_archive_path",
    "bomb": "archive_too_large",
    "agent_too_old": "agent_too_old",
    "reference_mismatch": "reference_mismatch",
    "output_missing_from_graph": "model_load_failed",
}


@pytest.mark.parametrize(("kind", "reason"), ATTACKS.items(), ids=list(ATTACKS))
def test_a_bad_bundle_is_refused_with_its_reason_and_the_old_model_keeps_serving(
    kind, reason, installed, runtime, classifier_onnx, signer, bundle_server, tmp_path
):
    current = installed.store.pointer(CURRENT)
    bundle, archive = _attack(kind, classifier_onnx, signer, tmp_path)
    url = serve(bundle_server, f"{kind}.tar.gz", archive)

    with pytest.raises(UpdateError) as failure:
        installed.converge(desired_for(bundle, archive, url, signer, 2))

    assert failure.value.reason == reason
    assert runtime.last["phase"] == "failed" and runtime.last["error"].startswith(reason)
    assert runtime.last["model_version"] == "1.2.0" and runtime.last["fallback"] is False
    assert ("validation_failed", reason) in [(k, d.get("reason")) for k, d in runtime.events]
    assert installed.holder.session.version == "1.2.0" and not installed.holder.fallback
    assert installed.store.pointer(CURRENT) == current
    leftovers = [p.name for p in installed.store.root.iterdir() if p.name.startswith(".unpack")]
    assert leftovers == [] and not (tmp_path / "escaped.txt").exists()
    assert not list(installed.store.downloads.iterdir()), "a refused archive is not kept"


def test_a_rollback_to_the_previous_version_needs_no_download(
    installed, runtime, crafted, classifier_onnx, signer, bundle_server, tmp_path
):
    first = publish(crafted, signer, bundle_server, tmp_path, 3)
    installed.converge(publish(newer(classifier_onnx), signer, bundle_server, tmp_path, 2))
    assert installed.holder.session.version == "1.3.0"
    assert installed.store.pointer(PREVIOUS) is not None
    before = len(bundle_server.requests)

    # The older version alone is not enough: a replayed old document must not take the device back.
    with pytest.raises(UpdateError, match="downgrade"):
        installed.converge(first)
    assert installed.holder.session.version == "1.3.0"
    assert ("validation_failed", "downgrade") in [(k, d.get("reason")) for k, d in runtime.events]

    assert first.model is not None
    rollback = sign(desired_doc(4, model=first.model.model_dump(), rollback_to=first.model.version), signer)
    installed.converge(rollback)

    assert len(bundle_server.requests) == before, "the previous version came from disk"
    assert installed.holder.session.version == "1.2.0"
    assert runtime.last["phase"] == "rolled_back" and runtime.last["model_version"] == "1.2.0"
    assert installed.store.pointer(PREVIOUS).name.startswith("parts-1.3.0")  # type: ignore[union-attr]


def test_an_older_version_is_downloaded_and_installed_only_by_an_explicit_rollback(
    installed, runtime, crafted, classifier_onnx, signer, bundle_server, tmp_path
):
    old = publish(crafted, signer, bundle_server, tmp_path, 2)  # 1.2.0, the version installed first
    installed.converge(publish(newer(classifier_onnx, "1.3.0", 6), signer, bundle_server, tmp_path, 3))
    installed.converge(publish(newer(classifier_onnx, "1.4.0", 7), signer, bundle_server, tmp_path, 4))
    assert installed.store.find(old.model.manifest_sha256) is None, "1.2.0 is no longer on disk"

    with pytest.raises(UpdateError, match="downgrade"):
        installed.converge(sign(desired_doc(5, model=old.model.model_dump()), signer))
    assert installed.holder.session.version == "1.4.0"

    installed.converge(sign(desired_doc(6, model=old.model.model_dump(), rollback_to="1.2.0"), signer))
    assert installed.holder.session.version == "1.2.0"


def test_only_the_current_and_previous_versions_stay_on_disk(
    installed, classifier_onnx, signer, bundle_server, tmp_path
):
    installed.converge(publish(newer(classifier_onnx, "1.3.0", 6), signer, bundle_server, tmp_path, 2))
    installed.converge(publish(newer(classifier_onnx, "1.4.0", 7), signer, bundle_server, tmp_path, 3))
    names = sorted(p.name.split("-")[1] for p in installed.store.installed())
    assert names == ["1.3.0", "1.4.0"]


def test_a_damaged_installed_model_gives_way_to_the_fallback_at_start(installed, config, tmp_path):
    current = installed.store.pointer(CURRENT)
    model = current / "model.onnx"
    model.write_bytes(model.read_bytes()[:-10])
    installed.stop()

    runtime = RecordingRuntime(config)
    restarted = Updater(config)
    restarted.start(runtime)
    try:
        assert restarted.holder.fallback
        assert runtime.last["fallback"] is True and runtime.last["model_version"] == "0.0.0"
        kinds = dict(runtime.events)
        assert "fallback_engaged" in kinds and "size_mismatch" in kinds["fallback_engaged"]["reason"]
        assert restarted.holder.infer(np.zeros((8, 8, 3), dtype=np.uint8)).label in ("dark", "bright")
    finally:
        restarted.stop()


def test_a_model_failing_frame_after_frame_is_replaced_by_the_fallback_which_decides_the_next_frames(
    installed, runtime, monkeypatch
):
    threshold = installed.settings.crash_threshold

    def broken(frame: Any) -> Any:
        raise RuntimeError("onnxruntime fell over")

    monkeypatch.setattr(installed.holder.session, "infer", broken)
    after = threading.Event()
    frames = [np.full((48, 64, 3), 30, dtype=np.uint8)] * (threshold + 5)
    decided: list[Any] = []
    pipeline = Pipeline(
        ListSource(frames, gates={threshold: after}),
        installed.holder,
        lossless=True,
        on_result=lambda frame, result: decided.append(result),
    )
    installed.attach(pipeline)
    pipeline.start()
    try:
        # The updater's own thread notices the run of failures; the frames after it wait for that.
        deadline = time.monotonic() + 20
        while not installed.holder.fallback and time.monotonic() < deadline:
            time.sleep(0.05)
        assert installed.holder.fallback, f"no fallback after {pipeline.errors} failed frames"
        after.set()
        assert pipeline.wait(20)
    finally:
        pipeline.stop()

    assert pipeline.errors == threshold and decided, "the frames after the swap were decided"
    assert {(r.model_version, r.label in ("dark", "bright")) for r in decided} == {("0.0.0", True)}
    assert len(decided) == 5
    assert runtime.last["fallback"] is True and runtime.last["phase"] == "failed"
    assert "fallback" in runtime.last["error"]
    assert "fallback_engaged" in runtime.event_kinds()


def test_a_keyring_update_from_the_control_plane_lets_a_rotated_key_sign(
    updater, runtime, crafted, signer, bundle_server, tmp_path
):
    rotated = serve_rotated_keyring(bundle_server, signer)

    updater.converge(publish(crafted, rotated, bundle_server, tmp_path, 1))

    assert updater.holder.session.version == "1.2.0"
    stored = json.loads((tmp_path / "data" / "keyring.json").read_text())
    assert stored["sequence"] == 1 and len(stored["keys"]) == 2


def test_the_archive_digest_is_checked_against_the_desired_state(
    updater, runtime, crafted, signer, bundle_server, tmp_path
):
    desired = publish(crafted, signer, bundle_server, tmp_path, 1)
    assert desired.model is not None
    other = desired.model.model_copy(update={"sha256": hashlib.sha256(b"x").hexdigest()})
    wrong = sign(desired.model_copy(update={"model": other}), signer)
    with pytest.raises(UpdateError):
        updater.converge(wrong)
    assert runtime.last["error"].startswith("etag_mismatch")


def test_a_disk_failure_while_installing_keeps_the_old_model_and_is_retried(
    installed, runtime, classifier_onnx, signer, bundle_server, tmp_path, monkeypatch
):
    from agent import updater as updater_module

    def full_disk(self, unpacked, bundle):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(updater_module.ModelStore, "install", full_disk)
    installed.converged.clear()
    installed.submit(publish(newer(classifier_onnx), signer, bundle_server, tmp_path, 2))
    assert installed.converged.wait(30)

    assert runtime.last["phase"] == "failed" and runtime.last["error"].startswith("io_error")
    assert installed.holder.session.version == "1.2.0"
    assert installed._retry is not None, "the update is tried again later"
    assert not [p for p in installed.store.root.iterdir() if p.name.startswith(".unpack")]


def test_a_candidate_runs_in_shadow_beside_the_model_in_service_without_being_installed(
    installed, runtime, crafted, classifier_onnx, signer, bundle_server, tmp_path
):
    serving = publish(crafted, signer, bundle_server, tmp_path, 3).model
    candidate = publish(newer(classifier_onnx), signer, bundle_server, tmp_path, 4).model
    assert serving is not None and candidate is not None

    installed.converge(sign(desired_doc(5, model=serving.model_dump(), shadow=candidate.model_dump()), signer))

    assert installed.holder.session.version == "1.2.0" and installed.store.pointer(CURRENT).name.startswith(
        "parts-1.2.0"
    )
    assert installed.holder.shadow is not None and installed.holder.shadow.version == "1.3.0"
    assert runtime.last["shadow_version"] == "1.3.0" and runtime.last["model_version"] == "1.2.0"
    assert "shadow_started" in runtime.event_kinds()
    assert installed.store.find(candidate.manifest_sha256) is None, "a candidate is never installed"
    assert not list(installed.store.downloads.iterdir())

    installed.converge(sign(desired_doc(6, model=serving.model_dump()), signer))
    assert installed.holder.shadow is None and runtime.last["shadow_version"] is None


@pytest.mark.parametrize("kind", ["tampered_model", "untrusted_key", "reference_mismatch"])
def test_a_candidate_that_fails_verification_is_reported_and_not_run(
    kind, installed, runtime, crafted, classifier_onnx, signer, bundle_server, tmp_path
):
    serving = publish(crafted, signer, bundle_server, tmp_path, 3).model
    bundle, archive = _attack(kind, classifier_onnx, signer, tmp_path)
    url = serve(bundle_server, f"{kind}.tar.gz", archive)
    candidate = desired_for(bundle, archive, url, signer, 4).model
    assert serving is not None and candidate is not None

    installed.converge(sign(desired_doc(5, model=serving.model_dump(), shadow=candidate.model_dump()), signer))

    assert installed.holder.shadow is None
    assert ("shadow_failed", ATTACKS[kind]) in [(k, d.get("reason")) for k, d in runtime.events]
    assert runtime.last["phase"] == "active" and runtime.last["model_version"] == "1.2.0"
    assert not list(installed.store.downloads.iterdir()), "a refused candidate is not kept"

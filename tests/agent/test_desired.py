"""The desired state's one owner: a document is verified before it is saved or any listener sees it."""

from __future__ import annotations

import json
import threading
from datetime import timedelta
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.config import AgentConfig, atomic_write
from agent.desired import DesiredState
from agent.kernel import protocol
from agent.trust import Trust
from registry.bundles import Signer
from tests.agent.conftest import BundleServer, RecordingRuntime, serve_rotated_keyring, sign
from tests.agent.helpers import desired_doc


@pytest.fixture
def runtime(config: AgentConfig) -> RecordingRuntime:
    return RecordingRuntime(config)


def document(generation: int, **config: Any) -> protocol.Desired:
    return desired_doc(generation, config=config)


def forgeries(signer: Signer) -> dict[str, protocol.Desired]:
    genuine = sign(document(7, telemetry_interval_s=30), signer)
    return {
        "unknown_key": sign(document(1_000_000, telemetry_interval_s=1), Signer(Ed25519PrivateKey.generate())),
        "bad_signature": document(8, telemetry_interval_s=1),  # not signed at all
        "altered": genuine.model_copy(update={"config": protocol.RuntimeConfig(telemetry_interval_s=1)}),
    }


def test_a_forged_or_unverifiable_document_is_never_saved_nor_seen_by_any_listener(
    config: AgentConfig, runtime: RecordingRuntime, signer: Signer
) -> None:
    state = runtime.desired_state
    seen: list[protocol.Desired] = []
    state.subscribe(seen.append)

    with mock.patch("agent.desired.atomic_write", autospec=True) as write:
        for forged in forgeries(signer).values():
            assert not state.offer(forged)

    write.assert_not_called()
    assert seen == [] and state.current is None and not config.desired_path.exists()
    reasons = [data["reason"] for kind, data in runtime.events if kind == "desired_rejected"]
    assert reasons == ["unknown_key", "bad_signature", "bad_signature"]
    # A refusal is an event: it changes nothing the device reports (generation, phase, error).
    assert runtime.reports == [] and runtime.reported_fields == {}


def test_a_valid_document_is_saved_once_and_broadcast_once(
    config: AgentConfig, runtime: RecordingRuntime, signer: Signer
) -> None:
    state = runtime.desired_state
    first: list[protocol.Desired] = []
    second: list[protocol.Desired] = []
    state.subscribe(first.append)
    state.subscribe(second.append)
    genuine = sign(document(3, escalation_threshold=0.4), signer)

    with mock.patch("agent.desired.atomic_write", autospec=True, side_effect=atomic_write) as write:
        assert state.offer(genuine)
        assert not state.offer(genuine), "the retained copy, redelivered on reconnect, changes nothing"

    write.assert_called_once_with(config.desired_path, protocol.encode(genuine), mode=0o600)
    assert first == [genuine] and second == [genuine]
    assert state.current == genuine
    assert protocol.decode("desired", config.desired_path.read_bytes()) == genuine
    assert runtime.events == []


def test_a_refused_document_leaves_the_verified_one_in_place(
    config: AgentConfig, runtime: RecordingRuntime, signer: Signer
) -> None:
    state = runtime.desired_state
    genuine = sign(document(5, telemetry_interval_s=10), signer)
    assert state.offer(genuine)
    stored = config.desired_path.read_bytes()

    for forged in forgeries(signer).values():
        state.offer(forged)
    assert state.offer(sign(document(6), signer)), "a forged huge generation does not hide the next genuine one"

    assert protocol.decode("desired", stored) == genuine
    current = state.current
    assert current is not None and current.generation == 6


def test_a_document_signed_by_a_rotated_key_is_taken_once_the_keyring_is_refreshed(
    config: AgentConfig, runtime: RecordingRuntime, signer: Signer, bundle_server: BundleServer, tmp_path: Path
) -> None:
    rotated = serve_rotated_keyring(bundle_server, signer)

    assert runtime.desired_state.offer(sign(document(1), rotated))

    assert bundle_server.downloads("/api/v1/keyring") == 1
    assert json.loads((tmp_path / "data" / "keyring.json").read_text())["sequence"] == 1


def test_a_key_no_keyring_update_vouches_for_is_refused_after_one_refresh(
    config: AgentConfig, runtime: RecordingRuntime, bundle_server: BundleServer
) -> None:
    stranger = Signer(Ed25519PrivateKey.generate())

    assert not runtime.desired_state.offer(sign(document(1), stranger))

    assert bundle_server.downloads("/api/v1/keyring") == 1
    assert ("desired_rejected", "unknown_key") in [(k, d["reason"]) for k, d in runtime.events]


def test_after_a_restart_the_stored_document_is_verified_again_and_handed_once_to_each_listener(
    config: AgentConfig, runtime: RecordingRuntime, signer: Signer
) -> None:
    genuine = sign(document(4, telemetry_interval_s=20), signer)
    assert runtime.desired_state.offer(genuine)

    restarted = DesiredState(config, Trust(config), RecordingRuntime(config))
    seen: list[protocol.Desired] = []
    restarted.subscribe(seen.append)
    assert restarted.current == genuine and seen == [genuine]

    # A document written to the disk behind the agent's back is not trusted more than the network.
    config.desired_path.write_bytes(protocol.encode(forgeries(signer)["altered"]))
    assert DesiredState(config, Trust(config), RecordingRuntime(config)).current is None


def test_documents_from_the_network_are_verified_on_the_desired_thread(
    runtime: RecordingRuntime, signer: Signer
) -> None:
    state = runtime.desired_state
    arrived = threading.Event()
    threads: list[str] = []

    def listener(desired: protocol.Desired) -> None:
        threads.append(threading.current_thread().name)
        arrived.set()

    state.subscribe(listener)
    state.start()
    try:
        state.submit(forgeries(signer)["bad_signature"])
        state.submit(sign(document(2), signer))
        assert arrived.wait(10)
    finally:
        state.stop()
    assert threads == ["desired"]


def test_a_genuine_document_of_another_device_is_refused_and_reported(
    config: AgentConfig, runtime: RecordingRuntime, signer: Signer
) -> None:
    """Replay across devices: a document signed for device B, published on A's topic, was installed by A."""
    state = runtime.desired_state
    mine = sign(document(3, telemetry_interval_s=10), signer)
    assert state.offer(mine)

    theirs = sign(desired_doc(50, device_id="dev-other", config={"telemetry_interval_s": 1}), signer)
    assert not state.offer(theirs)

    assert state.current == mine
    assert protocol.decode("desired", config.desired_path.read_bytes()) == mine
    refusal = [data for kind, data in runtime.events if kind == "desired_rejected"]
    assert [(r["reason"], r["generation"], r["current"]) for r in refusal] == [("wrong_device", 50, 3)]
    assert state.offer(sign(document(4), signer)), "the genuine next document is still taken: no freeze"


def test_an_older_or_conflicting_document_is_refused_as_stale_and_reported(
    runtime: RecordingRuntime, signer: Signer
) -> None:
    """Replay in time: the device's own older document, re-published retained, was ignored silently."""
    state = runtime.desired_state
    old = sign(document(2, telemetry_interval_s=30), signer)
    assert state.offer(old)
    new = sign(document(3, telemetry_interval_s=10), signer)
    assert state.offer(new)

    assert not state.offer(old)
    assert not state.offer(sign(document(3, telemetry_interval_s=1), signer)), "one generation, one document"

    assert state.current == new
    reasons = [(d["reason"], d["generation"]) for k, d in runtime.events if k == "desired_rejected"]
    assert reasons == [("stale", 2), ("stale", 3)]


def test_an_expired_document_is_refused_and_reported(runtime: RecordingRuntime, signer: Signer) -> None:
    state = runtime.desired_state
    withheld = sign(desired_doc(2, lifetime_s=60), signer)

    assert not state.offer(withheld, now=withheld.expires + timedelta(seconds=1))

    assert state.current is None
    assert [(k, d["reason"]) for k, d in runtime.events] == [("desired_rejected", "expired")]


def test_a_held_document_that_expires_keeps_serving_and_the_freeze_is_reported_once(
    runtime: RecordingRuntime, signer: Signer
) -> None:
    state = runtime.desired_state
    held = sign(desired_doc(2, lifetime_s=60, config={"telemetry_interval_s": 10}), signer)
    assert state.offer(held, now=held.issued_at)
    later = held.expires + timedelta(seconds=1)

    assert state.check_expiry(later) and state.check_expiry(later)

    assert state.current == held, "the device keeps serving with the expired document"
    assert runtime.event_kinds() == ["desired_expired"]
    assert runtime.reported_fields["desired_expired"] is True
    assert runtime.reported_fields.get("phase") is None

    fresh = sign(desired_doc(3, config={"telemetry_interval_s": 10}), signer)
    assert state.offer(fresh)
    assert runtime.reported_fields["desired_expired"] is False


def test_a_stored_document_that_expired_while_the_agent_was_down_is_still_served(
    config: AgentConfig, runtime: RecordingRuntime, signer: Signer
) -> None:
    held = sign(desired_doc(2, lifetime_s=60), signer)
    assert runtime.desired_state.offer(held, now=held.issued_at)

    restarted = RecordingRuntime(config)
    state = restarted.desired_state
    assert state.current == held
    assert state.check_expiry(held.expires + timedelta(seconds=1))
    assert restarted.event_kinds() == ["desired_expired"]


def test_a_stored_document_of_another_device_is_not_loaded(
    config: AgentConfig, runtime: RecordingRuntime, signer: Signer
) -> None:
    """A data directory copied from another device does not bring that device's desired state along."""
    config.desired_path.write_bytes(protocol.encode(sign(desired_doc(9, device_id="dev-other"), signer)))

    assert RecordingRuntime(config).desired_state.current is None

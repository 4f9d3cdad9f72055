"""Keyring updates and signed desired documents, verified as a device does (Django-free side)."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.kernel import protocol, verify
from agent.kernel.manifest import canonical_json
from registry.bundles import Signer
from tests.agent.helpers import desired_doc
from tests.registry.conftest import trusted


def update(signed_by: Signer, sequence: int, *keys: Signer) -> dict:
    document = {
        "type": "keyring",
        "sequence": sequence,
        "issued_at": datetime.now(timezone.utc).isoformat(),
        "keys": [trusted(k) for k in keys],
    }
    return {"document": document, "signature": signed_by.sign_document(document)}


@pytest.fixture
def new_signer() -> Signer:
    return Signer(Ed25519PrivateKey.generate())


def test_a_keyring_update_signed_by_a_trusted_key_introduces_the_new_key(
    signer, keyring, new_signer, crafted, tmp_path
):
    updated = verify.apply_keyring_update(keyring, update(signer, 1, signer, new_signer))

    assert set(updated.keys) == {signer.key_id, new_signer.key_id}
    checked = verify.verify_bundle(crafted.pack(new_signer, tmp_path), tmp_path / "u", updated, agent_version="1.0.0")
    assert checked.key_id == new_signer.key_id


def test_a_keyring_update_signed_only_by_the_key_it_introduces_is_refused(keyring, new_signer):
    with pytest.raises(verify.UnknownKey):
        verify.apply_keyring_update(keyring, update(new_signer, 1, new_signer))


def test_a_tampered_keyring_update_is_refused(signer, keyring, new_signer):
    tampered = update(signer, 1, signer)
    tampered["document"]["keys"].append(trusted(new_signer))

    with pytest.raises(verify.BadSignature):
        verify.apply_keyring_update(keyring, tampered)


def test_an_older_keyring_update_cannot_be_replayed(signer, keyring, new_signer):
    current = verify.apply_keyring_update(keyring, update(signer, 2, signer, new_signer))

    with pytest.raises(verify.Downgrade):
        verify.apply_keyring_update(current, update(signer, 1, signer))


def test_a_trust_store_entry_whose_id_does_not_match_its_key_is_refused(signer, new_signer):
    entry = trusted(signer)
    entry["public_key"] = trusted(new_signer)["public_key"]

    with pytest.raises(verify.UnknownKey):
        verify.Keyring.from_trust_store([entry])


PARTS = {
    "name": "parts",
    "version": "1.2.0",
    "sequence": 5,
    "target": "cpu-fp32",
    "bundle_url": "/api/v1/bundles/7/download",
    "sha256": "a" * 64,
    "size": 4096,
    "manifest_sha256": "b" * 64,
}


def signed_desired(signer: Signer, **fields) -> protocol.Desired:
    return verify.signed_desired(desired_doc(4, model=PARTS, **fields), signer.sign)


def test_a_signed_desired_document_verifies_after_a_trip_over_the_wire(signer, keyring):
    wire = protocol.encode(signed_desired(signer, config={"telemetry_interval_s": 30}))

    received = protocol.decode("desired", wire)

    assert isinstance(received, protocol.Desired)
    assert verify.verify_desired(received, keyring).key_id == signer.key_id


def test_a_desired_document_altered_in_transit_is_refused(signer, keyring):
    message = signed_desired(signer)
    assert message.model is not None
    forged = message.model_copy(update={"model": message.model.model_copy(update={"version": "0.9.0"})})

    with pytest.raises(verify.BadSignature):
        verify.verify_desired(forged, keyring)


def test_an_unsigned_or_foreign_desired_document_is_refused(keyring, new_signer):
    with pytest.raises(verify.BadSignature):
        verify.verify_desired(desired_doc(1), keyring)
    with pytest.raises(verify.UnknownKey):
        verify.verify_desired(signed_desired(new_signer), keyring)


def test_a_document_signed_as_plain_json_verifies_once_parsed_into_the_typed_model(signer, keyring):
    # What the control plane signed before the kernel typed the document: canonical JSON of a plain
    # dict, whole numbers as integers. Parsing must not change a byte of what gets verified.
    document = {
        "v": 1,
        "type": "desired",
        "generation": 9,
        "model": PARTS,
        "config": {"telemetry_interval_s": 15, "escalation_threshold": 0.25},
        "issued_at": "2026-01-02T03:04:05.678901Z",
        "device_id": "dev-test",
        "site": "plant-a",
        "expires": "2026-01-03T03:04:05.678901Z",
    }
    document["signature"] = signer.sign(canonical_json({k: v for k, v in document.items() if k != "signature"}))

    received = protocol.decode("desired", json.dumps(document).encode())

    assert isinstance(received, protocol.Desired) and received.config.telemetry_interval_s == 15
    assert verify.verify_desired(received, keyring).key_id == signer.key_id

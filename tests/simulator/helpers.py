"""Small scenarios and a signing key for the simulator's tests."""

from __future__ import annotations

import base64
from datetime import timedelta
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from agent.kernel import protocol, verify
from simulator import scenario as scenarios

SMALL: dict[str, Any] = {
    "name": "small",
    "seed": 11,
    "duration_s": 1800,
    "model": {"name": "parts", "version": "1.0.0", "bundle_bytes": 2_000_000},
    "hardware": {
        "orin": {"fps": 4, "latency_ms": {"median": 9.0, "spread": 0.2}},
        "rpi5": {"fps": 2, "latency_ms": {"median": 35.0, "spread": 0.25}, "confidence": {"mean": 0.82}},
    },
    "sites": [
        {"name": "plant", "count": 2, "devices": 6, "uplink_kbps": 20_000, "hardware": {"orin": 2, "rpi5": 1}},
        {"name": "farm", "devices": 3, "uplink_kbps": 64, "hardware": "rpi5"},
    ],
}


def small(**overrides: Any) -> scenarios.Scenario:
    return scenarios.parse({**SMALL, **overrides})


class Signer:
    """A control plane's signing key, for desired documents the simulated devices must verify."""

    def __init__(self) -> None:
        self.key = Ed25519PrivateKey.generate()
        raw = self.key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self.key_id = verify.key_id_for(raw)
        self.keyring = verify.Keyring.from_trust_store(
            [{"key_id": self.key_id, "public_key": base64.b64encode(raw).decode()}]
        )

    def sign(self, data: bytes) -> dict[str, str]:
        return {"alg": "ed25519", "key_id": self.key_id, "sig": base64.b64encode(self.key.sign(data)).decode()}

    def desired(self, device_id: str, generation: int, version: str, *, at: Any, **extra: Any) -> bytes:
        document = protocol.Desired(
            device_id=device_id,
            generation=generation,
            model=protocol.BundleRef(
                name="parts",
                version=version,
                sequence=generation + 1,
                bundle_url="/api/v1/bundles/1/download",
                size=2_000_000,
                manifest_sha256="0" * 64,
            ),
            issued_at=at,
            expires=at + timedelta(days=7),
            **extra,
        )
        return protocol.encode(verify.signed_desired(document, self.sign))

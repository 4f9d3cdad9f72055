"""A forged desired document cannot freeze a device: after it is refused, genuine documents still apply."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.kernel import protocol
from agent.runtime import Runtime
from agent.trust import Trust
from agent.updater import Updater
from registry.bundles import Signer
from tests.agent.conftest import publish, sign, trusted
from tests.agent.helpers import desired_doc


def test_a_refused_high_generation_does_not_hide_the_genuine_documents_that_follow(
    tmp_path: Path, bundle_server: Any, signer: Signer, crafted: Any, agent_config_factory: Any
) -> None:
    config = agent_config_factory(server_url=bundle_server.url, trust=[trusted(signer)])
    trust = Trust(config)
    updater = Updater(config, trust=trust)
    runtime = Runtime(config, trust=trust, components=[updater])
    updater.start(runtime)
    try:
        stranger = Signer(Ed25519PrivateKey.generate())
        forged = sign(desired_doc(1_000_000, config={"telemetry_interval_s": 1}), stranger)
        assert not runtime.desired_state.offer(forged)  # what the run loop's desired thread does with it
        assert runtime.desired_state.current is None and not config.desired_path.exists()
        assert "phase" not in runtime.reported_fields, "a refusal is reported as an event, not as a failed update"

        updater.converged.clear()
        assert runtime.desired_state.offer(publish(crafted, signer, bundle_server, tmp_path, 2))
        assert updater.converged.wait(30)

        assert updater.holder.session.version == "1.2.0"
        current = runtime.desired_state.current
        assert current is not None and current.generation == 2
        assert protocol.decode("desired", config.desired_path.read_bytes()) == current
        assert runtime.reported_fields["phase"] == "active"
    finally:
        updater.stop()
        runtime.outbox.close()

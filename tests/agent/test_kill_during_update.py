"""kill -9 at each update phase: on restart the device runs a verified model (old or new) and converges again."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from agent import config as agent_config
from agent.kernel import protocol
from agent.updater import CURRENT, KILL_AT_ENV, Updater, check_installed
from tests.agent.conftest import RecordingRuntime, publish, trusted
from tests.paths import ROOT
from tests.registry.conftest import Crafted

# The child converges once on the stored desired document, as the agent's updater thread would.
CHILD = """
import sys
from pathlib import Path
from agent import config
from agent.kernel import protocol
from agent.updater import Updater
from tests.agent.helpers import RecordingRuntime
settings = config.load(Path(sys.argv[1]))
updater = Updater(settings)
updater.start(RecordingRuntime(settings))
updater.converge(protocol.decode("desired", Path(sys.argv[2]).read_bytes()))
"""

PHASES = ["downloading", "verifying", "validating", "installing", "switching"]


@pytest.mark.parametrize("phase", PHASES)
def test_a_kill_at_each_update_phase_leaves_a_verified_model_and_the_update_completes_on_restart(
    phase: str, tmp_path: Path, bundle_server: Any, signer: Any, classifier_onnx: bytes, agent_config_factory: Any
) -> None:
    config = agent_config_factory(server_url=bundle_server.url, trust=[trusted(signer)])
    first = Updater(config)
    first.start(RecordingRuntime(config))
    first.converge(publish(Crafted(classifier_onnx), signer, bundle_server, tmp_path, 1))
    first.stop()
    update = Crafted(classifier_onnx)
    update.fields.update(version="1.3.0", sequence=6)
    desired = publish(update, signer, bundle_server, tmp_path, 2)
    config_path, desired_path = tmp_path / "agent.toml", tmp_path / "desired.json"
    agent_config.write(config_path, config)
    desired_path.write_bytes(protocol.encode(desired))

    env = {**os.environ, KILL_AT_ENV: phase, "PYTHONPATH": str(ROOT)}
    child = subprocess.run(
        [sys.executable, "-c", CHILD, str(config_path), str(desired_path)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        timeout=120,
    )
    assert child.returncode == -signal.SIGKILL, child.stderr.decode()[-2000:]

    runtime = RecordingRuntime(config)
    restarted = Updater(config)
    restarted.start(runtime)
    try:
        assert not restarted.holder.fallback
        assert restarted.holder.session.version in ("1.2.0", "1.3.0")
        current = restarted.store.pointer(CURRENT)
        assert current is not None
        assert check_installed(current, restarted.trust.keyring).manifest.version == restarted.holder.session.version
        assert not [p for p in restarted.store.root.iterdir() if p.name.startswith(".")], "no half-done leftovers"

        restarted.converge(desired)

        assert restarted.holder.session.version == "1.3.0"
        assert runtime.last["phase"] == "active" and runtime.last["fallback"] is False
    finally:
        restarted.stop()

"""`python -m demo --rollouts`: the good release rolls through its stages, the bad one is reverted at the canary.

The whole demo (twelve real agents on the embedded defaults) plus two staged
rollouts takes ten minutes or more on two cores, so it runs with `make chaos`;
`tests/rollouts/test_real_agents.py` proves the same behaviour in `make test`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.paths import ROOT

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(2400)]


def test_the_demo_rolls_a_good_release_out_and_reverts_a_bad_one_at_the_canary(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "MQTT_", "DJANGO_"))}
    command = [sys.executable, "-m", "demo.launcher", "--data-dir", str(tmp_path), "--web-port", "0"]
    command += ["--mqtt-port", "0", "--rollouts", "--stop-after", "1"]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=2300)

    assert result.returncode == 0, result.stdout[-5000:]
    figures = json.loads((tmp_path / "logs" / "rollouts.json").read_text())
    assert figures["good"]["state"] == "completed" and figures["good"]["all_active_s"] > 0
    assert figures["bad"]["state"] == "reverted" and "mean_confidence_drop" in figures["bad"]["halt_reason"]
    assert figures["bad"]["canary_back_s"] > 0
    # Every gate's value and verdict is printed as it is judged, and how to do the same from CI.
    assert "mean_confidence_drop" in result.stdout and ": fail" in result.stdout
    assert "edgefleet publish" in result.stdout and "edgefleet rollback site" in result.stdout

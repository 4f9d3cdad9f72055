"""`make demo` brings the whole system up on embedded defaults and stops it cleanly."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.paths import ROOT

pytestmark = pytest.mark.integration


def get_json(url: str, token: str) -> dict:  # type: ignore[type-arg]
    request = urllib.request.Request(url)  # noqa: S310 - the demo's own http:// address
    request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310 - localhost
        return json.load(response)  # type: ignore[no-any-return]


# Publishing (with the INT8 variant and CI's reference distribution) and rendering the cameras take
# a minute or two on two cores before the devices start.
@pytest.mark.timeout(600)
def test_the_demo_brings_twelve_devices_online_running_the_published_model_and_stops_cleanly(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "MQTT_", "DJANGO_"))}
    demo = subprocess.Popen(
        [sys.executable, "-m", "demo.launcher", "--data-dir", str(tmp_path), "--web-port", "0", "--mqtt-port", "0"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    try:
        assert demo.stdout is not None
        for line in demo.stdout:
            lines.append(line)
            if "Press Ctrl-C" in line:
                break
        output = "".join(lines)
        assert "Press Ctrl-C" in output, output
        server = re.search(r"dashboard : (http://\S+)/", output).group(1)  # type: ignore[union-attr]
        token = re.search(r"API token : (\S+)", output).group(1)  # type: ignore[union-attr]

        # Devices come online as their agents connect; poll the public API as an operator would.
        deadline = time.monotonic() + 60
        devices: list[dict] = []  # type: ignore[type-arg]
        while time.monotonic() < deadline:
            devices = get_json(f"{server}/api/v1/devices/", token)["results"]
            if len(devices) == 12 and all(d["online"] for d in devices):
                break
            time.sleep(1)
        assert len(devices) == 12 and all(d["online"] for d in devices), devices
        assert {d["site"] for d in devices} == {"plant-north", "depot-east", "farm-south"}

        # Each agent downloads, verifies and installs the published model, then reports it active.
        def active(device: dict) -> bool:  # type: ignore[type-arg]
            reported = device["reported"] or {}
            return reported.get("phase") == "active" and reported.get("model_version") == "1.0.0"

        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not all(active(d) for d in devices):
            time.sleep(1)
            devices = get_json(f"{server}/api/v1/devices/", token)["results"]
        assert all(active(d) for d in devices), [(d["name"], d["reported"]) for d in devices if not active(d)]

        # A good release waits for a person to start its rollout from the Models page.
        versions = get_json(f"{server}/api/v1/models/parts-classifier/versions/", token)["results"]
        assert {v["version"] for v in versions} == {"1.0.0", "1.1.0"}
        assert get_json(f"{server}/api/v1/rollouts/", token)["count"] == 0
        assert "press Start rollout beside 1.1.0" in output
    finally:
        demo.send_signal(signal.SIGINT)
        rest, _ = demo.communicate(timeout=60)
    assert demo.returncode == 0
    assert "stopped." in rest and "killing" not in rest
    assert "exited with" not in "".join(lines) + rest, "a child died while the demo ran"
    # The logs carry no tracebacks, and the embedded broker forwarded every
    # message (amqtt's iteration race used to drop one per connecting agent).
    for log in sorted((tmp_path / "logs").glob("*.log")):
        text = log.read_text(errors="replace")
        assert "Traceback" not in text and "changed size during iteration" not in text, (log.name, text[-3000:])

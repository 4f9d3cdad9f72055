"""`python -m demo --sim-devices N`: N simulated devices (``edgefleet-sim run``) beside the demo's real agents.

The scenario is written for the demo: its own ``sim-*`` sites, apart from the
real agents' three, with the demo's model and hardware profiles, and
heartbeats frequent enough for the demo's ``DEVICE_OFFLINE_AFTER_S``. The
simulator enrolls over the REST API with a token the demo issues and keeps
the identities in a state file, so ``--keep`` runs the same devices again.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from demo import scene

# slug -> (name, uplink in kbit/s, hardware mix by weight): a plant, two depots on slower links, a store.
SITES = {
    "sim-plant-west": ("West Plant (simulated)", 20_000, {"jetson-orin-nano": 3, "x86-nuc": 1}),
    "sim-depot-north": ("North Depot (simulated)", 8_000, {"jetson-orin-nano": 1, "raspberrypi-5": 1}),
    "sim-depot-south": ("South Depot (simulated)", 4_000, {"raspberrypi-5": 3, "jetson-orin-nano": 1}),
    "sim-store-central": ("Central Store (simulated)", 2_000, {"raspberrypi-5": 1}),
}


@dataclass(frozen=True)
class Board:
    """What a board measures running the demo's classifier (a 96x96 crop)."""

    fps: float
    latency_ms: float  # median; log-normal with ``latency_spread`` (sigma)
    latency_spread: float
    confidence: float  # mean top-1
    temperature_c: float
    temperature_spread_c: float


HARDWARE = {
    "jetson-orin-nano": Board(4, 6.0, 0.2, 0.88, 52, 3),
    "raspberrypi-5": Board(2, 24.0, 0.3, 0.86, 61, 4),
    "x86-nuc": Board(6, 4.0, 0.15, 0.88, 47, 3),
}
# Under the demo's DEVICE_OFFLINE_AFTER_S (30 s) with room for a busy bridge; the window as the real agents'.
HEARTBEAT_S = 15
WINDOW_S = 60
# The scenario's longest run: the demo stops the simulator when it stops.
DURATION_S = 30 * 86400
# Connections a second: the embedded broker (amqtt, one Python process) asks the database for each.
CONNECT_PER_S = 100


@dataclass(frozen=True)
class SimFleet:
    """Where a demo's simulated fleet keeps its files, and how the simulator is started."""

    folder: Path
    devices: int

    @property
    def scenario_path(self) -> Path:
        return self.folder / "scenario.toml"

    @property
    def state_path(self) -> Path:
        return self.folder / "state.json"

    def write_scenario(self) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.scenario_path.write_text(scenario(self.devices))
        return self.scenario_path

    def command(self, python: str, server: str, mqtt_url: str) -> list[str]:
        """``edgefleet-sim run`` on this run's addresses; the API token goes in the environment, not argv."""
        return [
            python,
            "-m",
            "simulator.cli",
            "run",
            str(self.scenario_path),
            "--server",
            server,
            "--mqtt",
            mqtt_url,
            "--state",
            str(self.state_path),
            "--connect-rate",
            str(CONNECT_PER_S),
            # Escalated frames without pixels would only crowd the real cameras' review queue.
            "--no-uploads",
        ]


def spread(devices: int) -> dict[str, int]:
    """Devices per site (slug -> count): evenly, the first sites take the rest; a site with none is left out."""
    share, rest = divmod(devices, len(SITES))
    counts = [share + (1 if index < rest else 0) for index in range(len(SITES))]
    return {slug: count for slug, count in zip(SITES, counts, strict=True) if count}


def scenario(devices: int) -> str:
    """The demo's scenario for ``devices`` simulated devices, as TOML (``simulator.scenario`` checks it)."""
    if devices < 1:
        raise ValueError("a simulated fleet has at least one device")
    labels = json.loads(scene.MODEL_METADATA.read_text())["labels"]
    # Mostly good parts; the rest share the defects.
    classes = {label: (0.85 if label == "ok" else 0.15 / (len(labels) - 1)) for label in labels}
    lines = [
        "# Written by python -m demo --sim-devices: the demo's simulated fleet (docs/simulator.md).",
        'name = "demo-sim"',
        "seed = 15",
        f"duration_s = {DURATION_S}",
        f"window_s = {WINDOW_S}",
        f"heartbeat_s = {HEARTBEAT_S}",
        "",
        "[model]",
        f'name = "{scene.MODEL}"',
        'version = "1.0.0"',
        "bundle_bytes = 2_000_000",
        "classes = { " + ", ".join(f"{label} = {share:.4f}" for label, share in classes.items()) + " }",
        f"escalation_threshold = {scene.ESCALATION_THRESHOLD}",
        "escalation_upload_share = 0.0",
    ]
    for name, board in HARDWARE.items():
        lines += [
            "",
            f"[hardware.{name}]",
            f"fps = {board.fps}",
            f"latency_ms = {{ median = {board.latency_ms}, spread = {board.latency_spread} }}",
            f"confidence = {{ mean = {board.confidence}, concentration = 20 }}",
            f"temperature_c = {{ mean = {board.temperature_c}, spread = {board.temperature_spread_c} }}",
        ]
    for slug, count in spread(devices).items():
        _, uplink, mix = SITES[slug]
        lines += [
            "",
            "[[sites]]",
            f'name = "{slug}"',
            f"devices = {count}",
            f"uplink_kbps = {uplink}",
            "hardware = { " + ", ".join(f"{profile} = {weight}" for profile, weight in mix.items()) + " }",
        ]
    return "\n".join(lines) + "\n"

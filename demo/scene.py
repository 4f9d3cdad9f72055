"""What the demo's devices see and run: the published model, rendered camera frames, agent settings.

The demo goes through the same doors as production: CI publishes the
project's own parts classifier with ``edgefleet publish`` (token with the
publish scope), an operator points every device at it through the REST API,
and each agent downloads, verifies and installs the signed bundle before it
runs inference on its camera, here a folder of rendered frames. One camera's
lamp has failed: its frames are dark, which the drift check should notice.
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import zoo
from zoo import render, samples

ROOT = Path(__file__).resolve().parent.parent
MODEL = "parts-classifier"
MODEL_FILE = zoo.onnx_path(MODEL)
MODEL_METADATA = zoo.metadata_path(MODEL)
# Normal cameras share one pool of distinct frames. Drift compares a device's
# last thousand frames with CI's 2,000: a camera looping over a hundred frames
# would show sampling noise as drift (PSI noise is about bins / distinct frames).
NORMAL_FRAMES = 1200
DARK_FRAMES = 300
CAMERA_FPS = 4.0
WINDOW_S = 10.0
DARK_CAMERA = ("farm-south", "barn-cam-4")


def write_frames(folder: Path, *, dark: bool) -> Path:
    """Camera frames (part crops as the line camera cuts them), drawn once and reused by later runs."""
    count = DARK_FRAMES if dark else NORMAL_FRAMES
    if folder.is_dir() and len(list(folder.glob("*.png"))) >= count:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    condition: render.Condition = "dark" if dark else "normal"
    # Seeds apart from CI's reference distribution and the published reference/calibration sets.
    for sample in samples.calibration_crops(count, seed=20_000 + int(dark), condition=condition):
        sample.image.save(folder / f"{sample.name}.png")
    return folder


def publish_model(bin_dir: Path, server: str, token: str, work: Path) -> dict[str, object]:
    """Publish the classifier as CI would, with reference and calibration images and its reference
    confidence distribution; idempotent."""
    references = samples.write_samples(work / "reference", samples.reference_crops(8))
    # Calibration under normal light: the INT8 variant and the drift baseline both come from it.
    calibration = samples.write_samples(work / "calibration", samples.calibration_crops(64, condition="normal"))
    metadata = work / f"{MODEL}.json"
    if not metadata.exists():
        # CI's measured confidence distribution: the drift baseline the dark camera is judged against,
        # measured with the agent's own inference code as a CI job would (python -m zoo.reference).
        measured = subprocess.run(
            [sys.executable, "-m", "zoo.reference", MODEL], capture_output=True, text=True, timeout=900, check=True
        )
        document = json.loads(MODEL_METADATA.read_text())
        document["reference_distribution"] = json.loads(measured.stdout)
        metadata.write_text(json.dumps(document, indent=1))
    extra = ["--quantize", *(arg for path in calibration for arg in ("--calibration", str(path)))]
    return publish(bin_dir, server, token, MODEL, MODEL_FILE, metadata, references, *extra)


def publish(
    bin_dir: Path, server: str, token: str, model: str, file: Path, metadata: Path, references: list[Path], *extra: str
) -> dict[str, Any]:
    """``edgefleet publish`` as a CI job runs it, with reference images and ``extra`` options; its JSON answer."""
    command = [
        str(bin_dir / "edgefleet"),
        "publish",
        "--server",
        server,
        "--token",
        token,
        "--model",
        model,
        "--file",
        str(file),
        "--metadata",
        str(metadata),
        *(arg for path in references for arg in ("--reference", str(path))),
        *extra,
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900)
    if result.returncode != 0:
        raise SystemExit(
            f"publishing {model} ({file.name}) failed (exit {result.returncode}):\n{result.stderr[-2000:]}"
        )
    return dict(json.loads(result.stdout))


CLOUD_MODEL = "cloud-classifier"


def publish_cloud_model(bin_dir: Path, server: str, token: str, work: Path) -> dict[str, object]:
    """Publish the cloud classifier (role ``cloud``) as CI would: the model the cloud worker answers with."""
    references = samples.write_samples(work / "reference", samples.reference_crops(8))
    return publish(
        bin_dir, server, token, CLOUD_MODEL, zoo.onnx_path(CLOUD_MODEL), zoo.metadata_path(CLOUD_MODEL), references
    )


def agent_environment(frames: Path) -> dict[str, str]:
    """The demo's camera and faster telemetry window, as the environment overrides an installer would set
    (``EDGEFLEET_AGENT_<SECTION>_<KEY>``, docs/agent.md); the agent validates them like its config file."""
    return {
        "EDGEFLEET_AGENT_CAPTURE_SOURCE": str(frames),
        "EDGEFLEET_AGENT_CAPTURE_LOOP": "true",
        "EDGEFLEET_AGENT_CAPTURE_MAX_FPS": str(CAMERA_FPS),
        "EDGEFLEET_AGENT_VISION_WINDOW_INTERVAL_S": str(WINDOW_S),
        # Frames the classifier is unsure of (below its escalate_below) go to the cloud model: the camera
        # with the failed lamp often, the others rarely. Two a second at most per device.
        "EDGEFLEET_AGENT_ESCALATION_ENABLED": "true",
        "EDGEFLEET_AGENT_ESCALATION_MAX_FRAMES_PER_S": "2",
    }


# Below the model's own escalate_below (0.6), at which about one frame in ten of a normal camera is unsure:
# here the camera with the failed lamp escalates, the others rarely. The threshold advisor
# (GET /api/v1/escalations/advisor/) shows the curve this choice sits on.
ESCALATION_THRESHOLD = 0.35


def assign_model(server: str, token: str, version: str, device_ids: list[str]) -> None:
    """Point every device at the published version through the REST API, as an operator's script would."""
    body = {"model": MODEL, "version": version, "config": {"escalation_threshold": ESCALATION_THRESHOLD}}
    for device_id in device_ids:
        api(server, token, "POST", f"/api/v1/devices/{device_id}/assign-model/", body)


def device_ids(server: str, token: str, sites: Iterable[str]) -> Mapping[tuple[str, str], str]:
    """(site slug, device name) -> device id of the devices at ``sites``, from the REST API."""
    rows = [
        row
        for slug in sites
        for row in api(server, token, "GET", f"/api/v1/devices/?site={urllib.parse.quote(slug)}&limit=1000")["results"]
    ]
    return {(row["site"], row["name"]): row["device_id"] for row in rows}


def api(server: str, token: str, method: str, path: str, body: object = None) -> Any:
    """One JSON request to the demo's own control plane with its API token; the answer's JSON."""
    request = urllib.request.Request(  # noqa: S310 - the demo's own server
        f"{server}{path}",
        data=None if body is None else json.dumps(body).encode(),
        method=method,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
        return json.load(response)

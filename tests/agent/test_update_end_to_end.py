"""A real agent, enrolled to a real control plane, installs a published model and decides frames with it.

The control plane is Django's live server (bundle download, keyring), the broker the machine's
Mosquitto, the bridge a real one: the desired state the bridge signs is what the agent verifies.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import zoo
from agent import config as agent_config
from bridge.process import Bridge
from core.models import AuditLog
from fleet import services
from fleet.models import Device, Site
from registry.models import ModelVersion
from telemetry.models import DeviceEvent, TelemetryRecord
from tests.agent.conftest import AgentProcess, make_agent_config, wait_until
from tests.brokers import clear_retained
from tests.registry.helpers import publish

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


MODEL = zoo.onnx_path("parts-classifier")
METADATA = zoo.metadata_path("parts-classifier")


def png(image: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def frames(tmp_path: Path) -> Path:
    """Rendered part crops, a few of each label, as an image folder the agent loops over."""
    from zoo import samples

    samples.write_samples(tmp_path / "frames", samples.reference_crops(count=8, seed=7_001))
    return tmp_path / "frames"


@pytest.fixture
def enrolled(enroll_device: Any, mqtt_url: str) -> Iterator[Any]:
    site = Site.objects.create(slug="plant-u", name="Plant U")
    enrollment = enroll_device(site, name="cam-u")
    yield enrollment
    clear_retained(mqtt_url, enrollment.device.device_id)


def agent_config_for(enrollment: Any, live_server: Any, mqtt_url: str, frames: Path, tmp_path: Path) -> Path:
    settings = make_agent_config(
        tmp_path / "data",
        server_url=live_server.url,
        mqtt_url=mqtt_url,
        device_id=enrollment.device.device_id,
        secret=enrollment.secret,
        trust=enrollment.trust_store,
        device={"name": "cam-u"},
        mqtt={"keepalive": 10},
        agent={"heartbeat_interval_s": 1},
        logging={"level": "debug"},
        capture={"source": str(frames), "loop": True, "max_fps": 20},
        vision={"window_interval_s": 1},
        escalation={"enabled": False},
    )
    path = tmp_path / "agent.toml"
    agent_config.write(path, settings)
    return path


def reported(device: Device) -> dict[str, Any]:
    device.refresh_from_db()
    return device.reported or {}


def test_a_real_agent_installs_a_published_model_and_sends_window_telemetry_from_real_inference(
    bridge: Bridge,
    enrolled: Any,
    live_server: Any,
    mqtt_url: str,
    frames: Path,
    tmp_path: Path,
    token_client: Any,
) -> None:
    from zoo import samples

    references = [png(sample.image) for sample in samples.reference_crops(count=4)]
    metadata = json.loads(METADATA.read_text())
    client = token_client("publish")
    response = publish(client, MODEL.read_bytes(), metadata, name="parts-classifier", images=references)
    assert response.status_code == 201, response.content
    version = ModelVersion.objects.get(version="1.0.0")
    device = enrolled.device
    process = AgentProcess(agent_config_for(enrolled, live_server, mqtt_url, frames, tmp_path), tmp_path / "agent.log")
    try:
        # Before any model is assigned the fallback serves, and the device says so.
        assert wait_until(lambda: reported(device).get("fallback") is True, bridge), process.log()

        services.assign_model(device, version, actor=None, config={"telemetry_interval_s": 1})

        def active() -> bool:
            state = reported(device)
            return state.get("phase") == "active" and state.get("model_version") == "1.0.0"

        assert wait_until(active, bridge, timeout=60), process.log()
        state = reported(device)
        assert state["fallback"] is False and state["model_name"] == "parts-classifier" and state["error"] is None
        assert AuditLog.objects.filter(action="device.assign_model").exists()

        def windows_from_the_model() -> bool:
            records = TelemetryRecord.objects.filter(device=device, kind="window")
            return any(
                r.data.get("frames", 0) > 0
                and r.data.get("model_version") == "1.0.0"
                and set(r.data.get("classes", {})) <= {"ok", "crack", "missing_hole", "scratch"}
                for r in records
            )

        assert wait_until(windows_from_the_model, bridge, timeout=30), process.log()
        assert DeviceEvent.objects.filter(device=device, kind="model_swap").exists()
        assert (tmp_path / "data" / "models" / "current").is_symlink()
    finally:
        process.close()

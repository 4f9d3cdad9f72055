"""A real agent escalates its unsure frames to the real control plane and records the cloud's answers.

The agent runs the committed parts classifier on rendered crops with an
escalation threshold no answer reaches, so it escalates every frame its budget
allows; Django's live server takes the uploads, the cloud worker's loop answers
them with the project's cloud classifier, the real bridge publishes each answer
on the device's ``commands`` topic and the agent keeps it beside its own
decision and reports it.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import zoo
from agent import config as agent_config
from bridge.process import Bridge
from escalations import answering
from escalations.models import Escalation
from fleet import services as fleet
from fleet.models import Device, Site
from registry.models import ModelVersion
from telemetry.models import DeviceEvent
from tests.agent.conftest import AgentProcess, make_agent_config, wait_until
from tests.brokers import clear_retained
from tests.registry.helpers import publish
from zoo import samples

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True), pytest.mark.timeout(300)]


def png(image: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def models(token_client: Callable[..., Any]) -> ModelVersion:
    """The edge classifier and the cloud classifier, published as CI publishes them; returns the edge's."""
    client = token_client("publish")
    references = [png(s.image) for s in samples.reference_crops(count=4)]
    for name in ("parts-classifier", "cloud-classifier"):
        metadata = json.loads(zoo.metadata_path(name).read_text())
        response = publish(client, zoo.onnx_path(name).read_bytes(), metadata, name=name, images=references)
        assert response.status_code == 201, response.content
    return ModelVersion.objects.get(model__name="parts-classifier")


@pytest.fixture
def agent(enroll_device: Callable[..., Any], live_server: Any, mqtt_url: str, tmp_path: Path) -> Iterator[Any]:
    site = Site.objects.create(slug="plant-esc", name="Plant Esc")
    enrollment = enroll_device(site, name="cam-esc")
    samples.write_samples(tmp_path / "frames", samples.calibration_crops(12, seed=31, condition="wide"))
    settings = make_agent_config(
        tmp_path / "data",
        server_url=live_server.url,
        mqtt_url=mqtt_url,
        device_id=enrollment.device.device_id,
        secret=enrollment.secret,
        trust=enrollment.trust_store,
        device={"name": "cam-esc"},
        mqtt={"keepalive": 10},
        agent={"heartbeat_interval_s": 1},
        capture={"source": str(tmp_path / "frames"), "loop": True, "max_fps": 4},
        vision={"window_interval_s": 2},
        # Every answer is below this: the agent escalates as many frames as its rate allows (two a second).
        escalation={"enabled": True, "threshold": 0.999, "max_frames_per_s": 2, "burst": 2},
    )
    agent_config.write(tmp_path / "agent.toml", settings)
    process = AgentProcess(tmp_path / "agent.toml", tmp_path / "agent.log")
    yield enrollment.device, process, tmp_path / "data"
    process.close()
    clear_retained(mqtt_url, enrollment.device.device_id)


def test_a_real_agent_escalates_gets_the_clouds_answer_and_keeps_it_beside_its_own(
    bridge: Bridge, models: ModelVersion, agent: Any, settings: Any, tmp_path: Path
) -> None:
    settings.CLOUD_MAX_QUEUE_DELAY_MS = 0
    device, process, data = agent
    fleet.assign_model(device, models, actor=None)

    # Each upload nudges the cloud worker (run inline here: the suite runs tasks eagerly); the loop's own
    # run afterwards finds whatever a nudge missed.
    def answered_three() -> bool:
        answering.answer_waiting()
        return Escalation.objects.filter(device=device, answered_at__isnull=False).count() >= 3

    assert wait_until(answered_three, bridge, timeout=120), process.log()
    answered = [row for row in Escalation.objects.filter(device=device, answered_at__isnull=False) if row.cloud_label]
    assert len(answered) >= 3

    def recorded() -> bool:
        events = DeviceEvent.objects.filter(device=device, kind="escalation_answered")
        return {e.data.get("escalation") for e in events} >= {row.pk for row in answered}

    assert wait_until(recorded, bridge, timeout=60), process.log()
    for row in answered:
        event = next(
            e
            for e in DeviceEvent.objects.filter(device=device, kind="escalation_answered")
            if e.data["escalation"] == row.pk
        )
        assert (event.data["frame"], event.data["cloud_label"], event.data["edge_label"]) == (
            row.frame_id,
            row.cloud_label,
            row.label,
        )
        assert event.data["agrees"] == (row.label == row.cloud_label)
    journal = [json.loads(line) for line in (data / "escalations" / "answers.jsonl").read_text().splitlines()]
    assert {entry["escalation"] for entry in journal} >= {row.pk for row in answered}
    assert Device.objects.get(pk=device.pk).online


def test_a_real_agent_at_a_metadata_only_site_sends_no_pixels(
    bridge: Bridge, models: ModelVersion, agent: Any, token_client: Callable[..., Any]
) -> None:
    device, process, _ = agent
    response = token_client("fleet").patch(
        f"/api/v1/sites/{device.site.slug}/", {"escalation_privacy": "metadata"}, format="json"
    )
    assert response.status_code == 200, response.content
    fleet.assign_model(device, models, actor=None)

    def escalated() -> bool:
        return Escalation.objects.filter(device=device).count() >= 3

    assert wait_until(escalated, bridge, timeout=120), process.log()
    rows = list(Escalation.objects.filter(device=device))
    # The device followed its signed policy: no frame was even offered to the server (which would refuse it).
    assert all(r.privacy == "metadata" and r.image_path is None and r.label for r in rows)
    assert "escalated frame refused" not in process.log()

"""A fleet on version 1.0.0 of a small published classifier, 2.0.0 published beside it, and a way to act its devices."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from typing import Any

import pytest

from agent.kernel import protocol
from fleet import services as fleet
from fleet.models import Device, Site
from registry.models import ModelVersion
from rollouts.models import RolloutDevice
from telemetry.metrics import Summary
from telemetry.models import Resolution, Scope, WindowRollup
from tests.payloads import window_data
from tests.registry.conftest import make_classifier, make_png_images, metadata_for
from tests.registry.helpers import publish


@pytest.fixture
def versions(token_client: Any) -> tuple[ModelVersion, ModelVersion]:
    client = token_client("publish")
    for seed, version in ((7, "1.0.0"), (8, "2.0.0")):
        response = publish(client, make_classifier(seed=seed), metadata_for(version), images=make_png_images())
        assert response.status_code == 201, response.content
    v1, v2 = ModelVersion.objects.filter(model__name="parts").order_by("sequence")
    return v1, v2


def report(device: Device, version: ModelVersion, phase: str = "active", error: str | None = None) -> None:
    """The device says it applied its newest desired document and runs ``version`` (or failed to)."""
    device.refresh_from_db()
    device.reported = {
        "generation": device.desired_generation,
        "model_name": version.model.name,
        "model_version": version.version,
        "phase": phase,
        "agent_version": "0.1.0",
        **({"error": error} if error else {}),
    }
    device.save(update_fields=["reported"])


def alive(devices: Iterable[Device], now: datetime) -> None:
    Device.objects.filter(pk__in=[d.pk for d in devices]).update(online=True, last_seen=now)


def window(
    device: Device,
    bucket: datetime,
    version: ModelVersion,
    *,
    latency_ms: float = 20.0,
    confidence: tuple[float, float] = (6, 2),
    escalation_rate: float = 0.05,
    frames: int = 600,
    seed: int = 0,
    answers: tuple[str, str] = ("ok", "scratch"),
) -> None:
    """One minute rollup of the device's windows, as the rollup task would have written it.

    ``answers``: the class answered on 90 % of frames, then the one on 10 %.
    """
    rng = random.Random(seed)
    start = bucket.replace(second=0, microsecond=0)
    data = window_data(
        start,
        [rng.lognormvariate(0, 0.1) * latency_ms for _ in range(frames)],
        [rng.betavariate(*confidence) for _ in range(frames)],
        rng.choices(list(answers), weights=[0.9, 0.1], k=frames),
        model=f"{version.model.name}@{version.version}",
        escalations=int(frames * escalation_rate),
    )
    summary = Summary()
    summary.add_window(protocol.window_of(protocol.TelemetryRecord(seq=1, kind="window", ts=start, data=data)))
    # Recomputed whole, as the rollup task writes a bucket: a second drive in one test may land on the same minute.
    WindowRollup.objects.update_or_create(
        resolution=Resolution.MINUTE,
        scope=Scope.DEVICE,
        key=device.device_id,
        model_name=version.model.name,
        model_version=version.version,
        bucket=start,
        defaults={"devices": 1, **summary.totals()},
    )


@pytest.fixture
def fleet_on_v1(
    versions: tuple[ModelVersion, ModelVersion], site: Site, other_site: Site, enroll_device: Callable[..., Any]
) -> list[Device]:
    """Ten devices over two sites, each running 1.0.0 (assigned and reported active)."""
    v1, _ = versions
    devices = []
    for i in range(10):
        device = enroll_device(site if i < 6 else other_site, name=f"cam-{i}", agent_version="0.1.0").device
        fleet.assign_model(device, v1, actor="test")
        report(device, v1)
        devices.append(device)
    return devices


def sent_to(rollout_pk: int, state: str | None = None) -> list[RolloutDevice]:
    rows = RolloutDevice.objects.filter(rollout_id=rollout_pk).select_related("device")
    return list(rows.filter(state=state) if state else rows)


def minutes(start: datetime, n: float) -> datetime:
    return start + timedelta(minutes=n)

"""A fleet in a known state for the dashboard pages: telemetry, reported state, events, alerts, a registry."""

from __future__ import annotations

import random
from datetime import datetime, timedelta
from typing import Any

from django.utils import timezone

from agent.kernel import protocol
from fleet.models import Device
from registry.models import Alias, Bundle, Model, ModelVersion
from telemetry import alerts, services
from telemetry.models import Alert
from tests.telemetry.factories import Feed, roll_up_everything
from tests.telemetry.helpers import alive


def with_telemetry(device: Device, now: datetime | None = None, *, minutes: int = 20, seed: int = 0) -> Device:
    """Windows and heartbeats over the last ``minutes`` through the ingest path, rolled up as the beat would."""
    now = now or timezone.now()
    start = (now - timedelta(minutes=minutes + 2)).replace(second=0, microsecond=0)
    feed = Feed(device)
    records = feed.windows(start, minutes=minutes, rng=random.Random(seed), per_minute=2, escalations=3)
    beats = [
        feed.heartbeat(start + timedelta(minutes=m), temperature_c=50.0 + m / 2, cpu_freq_mhz=1500.0 - 10 * m)
        for m in range(0, minutes, 2)
    ]
    feed.store([*records, *beats])
    roll_up_everything()
    device.refresh_from_db()
    return device


def with_heartbeats_only(device: Device, now: datetime | None = None, *, minutes: int = 10) -> Device:
    """A device that runs no model yet: heartbeats, no inference windows (as the demo's devices on the fallback)."""
    now = now or timezone.now()
    feed = Feed(device)
    feed.store(
        [
            feed.heartbeat(now - timedelta(minutes=m), temperature_c=None, cpu_freq_mhz=2400.0)
            for m in range(minutes, 0, -1)
        ]
    )
    roll_up_everything()
    device.refresh_from_db()
    return device


def reporting(device: Device, **reported: Any) -> Device:
    """The device says it runs this (as the bridge stores a ``reported`` message)."""
    device.reported = {
        "generation": 1,
        "model_name": "detector",
        "model_version": "1.0.0",
        "phase": "active",
        "agent_version": "0.1.0",
        "fallback": False,
        **reported,
    }
    device.save(update_fields=["reported"])
    return device


def with_event(device: Device, kind: str = "model.swap", **data: Any) -> None:
    services.record_event(device, protocol.Event(kind=kind, data=data))


def open_alert(device: Device) -> Alert:
    """A temperature alert opened the way the evaluator opens it: the condition held past the rule's duration."""
    now = timezone.now()
    alerts.ensure_rules()
    alive(device, now, temperature_c=99.0)
    alerts.evaluate(now)
    later = now + timedelta(minutes=6)
    alive(device, later, temperature_c=99.0)
    alerts.evaluate(later)
    return Alert.objects.get(rule__kind="temperature_high", device=device)


def registry_model(name: str = "detector", versions: int = 1) -> Model:
    """A model with versions, an alias and a float and INT8 bundle per version (figures as CI records them)."""
    model = Model.objects.create(name=name, task="detection", description="Parts on the belt")
    version = None
    for i in range(versions):
        version = ModelVersion.objects.create(
            model=model,
            version=f"1.{i}.0",
            sequence=i + 1,
            content_digest="0" * 64,
            input_spec={},
            output={},
            labels=["ok", "defect"],
        )
        Bundle.objects.create(
            version=version,
            target="cpu-fp32",
            file=f"b/{name}-{i}.tar",
            sha256="1" * 64,
            size=4_500_000,
            manifest_sha256="2" * 64,
            key_id="k1",
        )
        Bundle.objects.create(
            version=version,
            target="cpu-int8",
            file=f"b/{name}-{i}-int8.tar",
            sha256="3" * 64,
            size=1_300_000,
            manifest_sha256="4" * 64,
            key_id="k1",
            metrics={"latency_ratio": 0.62, "top1_agreement": 0.97, "detection_agreement": 0.94},
        )
    assert version is not None
    Alias.objects.create(model=model, name="production", version=version)
    return model

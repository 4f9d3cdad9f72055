"""Data steps of the telemetry migrations, run against today's models."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from django.apps import apps

from fleet.models import Device, Site
from tests.payloads import heartbeat_data

pytestmark = pytest.mark.django_db


def test_a_last_heartbeat_frozen_in_the_future_is_brought_back_to_now(
    site: Site, enroll_device: Callable[..., Any]
) -> None:
    """Stored before clocks ahead were restamped, such a heartbeat stayed the newest for good."""
    migration = importlib.import_module("telemetry.migrations.0008_quarantine_and_device_clock")
    frozen, sound, never = (enroll_device(site, name=name).device for name in ("frozen", "sound", "never"))
    now = datetime.now(timezone.utc)
    future = (now + timedelta(days=3000)).isoformat()
    recent = (now - timedelta(seconds=30)).isoformat()
    Device.objects.filter(pk=frozen.pk).update(last_heartbeat={**heartbeat_data(), "ts": future})
    Device.objects.filter(pk=sound.pk).update(last_heartbeat={**heartbeat_data(), "ts": recent})

    migration.unfreeze_heartbeats(apps, None)

    frozen.refresh_from_db()
    sound.refresh_from_db()
    never.refresh_from_db()
    assert abs(datetime.fromisoformat(frozen.last_heartbeat["ts"]) - now) < timedelta(minutes=1)
    assert frozen.last_heartbeat["cpu_percent"] == heartbeat_data()["cpu_percent"]
    assert sound.last_heartbeat["ts"] == recent and never.last_heartbeat == {}

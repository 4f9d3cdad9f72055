"""A device page answers 200 whatever its stored rows hold, and shows a wrong clock and quarantined rows."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from django.db import connection
from django.test import Client

from fleet.models import Device, Site
from telemetry.models import DeviceClock, Quarantine

pytestmark = pytest.mark.django_db


@pytest.fixture
def device(site: Site, enroll_device: Callable[..., Any]) -> Device:
    return enroll_device(site).device


def insert_event(device: Device, at: str, kind: str) -> None:
    """An event as SQL writes it, around the bridge and its bounds."""
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO telemetry_deviceevent (device_id, kind, at, received_at, data) "
            "VALUES (%s, %s, %s::timestamptz, now(), '{}'::jsonb)",
            [device.pk, kind, at],
        )


def test_the_device_page_answers_200_with_events_at_the_ends_of_time(viewer_client: Client, device: Device) -> None:
    """As found: one event dated year 1 at +14:00 (1 BC in UTC) made the page answer 500:
    reading the event list raised DataError."""
    for at in ("0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00", "0001-01-01T00:00:00Z"):
        insert_event(device, at, "ends_of_time")
    insert_event(device, "9998-06-01T00:00:00Z", "far_but_readable")
    insert_event(device, datetime.now(timezone.utc).isoformat(), "model_swap")

    response = viewer_client.get(f"/devices/{device.device_id}/")

    assert response.status_code == 200
    body = response.content.decode()
    assert "model_swap" in body and "far_but_readable" in body and "ends_of_time" not in body
    assert 'data-testid="unreadable-events">3 stored events' in body


def test_the_device_page_shows_a_clock_ahead_and_quarantined_rows(viewer_client: Client, device: Device) -> None:
    now = datetime.now(timezone.utc)
    DeviceClock.observe(device.pk, now + timedelta(hours=5), now, 12)
    Quarantine.note("rollups", "telemetry_record:42", "unreadable_time", "seq 3 recorded_at 0001-12-31 BC", device.pk)

    response = viewer_client.get(f"/devices/{device.device_id}/")

    body = response.content.decode()
    assert response.status_code == 200
    assert "ahead by 18000 s" in body and "12 messages stored at their receiving time" in body
    assert 'data-testid="quarantine"' in body and "telemetry_record:42" in body and "unreadable_time" in body


def test_a_heartbeat_that_is_not_an_object_does_not_break_the_page(viewer_client: Client, device: Device) -> None:
    Device.objects.filter(pk=device.pk).update(last_heartbeat=["not", "an", "object"])
    assert viewer_client.get(f"/devices/{device.device_id}/").status_code == 200

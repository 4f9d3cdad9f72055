"""A device's liveness, written only through the fleet model's methods."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from django.db import connection, transaction

from fleet.models import Device, Ingested, Site

pytestmark = pytest.mark.django_db

T0 = datetime(2026, 11, 23, 12, 0, tzinfo=timezone.utc)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def beat(agent_version: str = "0.1.0", **data: Any) -> dict[str, Any]:
    return {"agent_version": agent_version, "uptime_s": 1.0, "cpu_percent": 10.0, **data}


@pytest.fixture
def device(site: Site, enroll_device: Callable[..., Any]) -> Device:
    return enroll_device(site).device


def fresh(device: Device) -> Device:
    return Device.objects.get(pk=device.pk)


def test_status_then_a_heartbeat_then_silence_takes_a_device_offline(device: Device) -> None:
    assert device.record_presence(True, at(0)) is True
    Device.objects.touch_seen_bulk([Ingested(device.pk, 5, at(30), beat("0.2.0"))], seen_at=at(31))
    row = fresh(device)
    assert row.online and row.last_seen == at(31) and row.status_changed_at == at(0)
    assert row.last_heartbeat["ts"] == at(30).isoformat() and row.agent_version == "0.2.0"
    assert row.telemetry_acked_seq == 5

    assert Device.objects.mark_silent_offline(cutoff=at(31), at=at(200)) == 0, "seen at the cutoff is not silent"
    assert Device.objects.mark_silent_offline(cutoff=at(190), at=at(200)) == 1
    row = fresh(device)
    assert not row.online and row.status_changed_at == at(200) and row.last_seen == at(31)
    assert Device.objects.mark_silent_offline(cutoff=at(190), at=at(201)) == 0, "already offline"


def test_an_older_status_is_ignored_with_the_agent_version_it_names(device: Device) -> None:
    assert device.record_presence(True, at(10), agent_version="0.2.0") is True
    assert device.record_presence(False, at(5), agent_version="0.1.0") is False
    row = fresh(device)
    assert row.online and row.status_changed_at == at(10) and row.agent_version == "0.2.0"
    assert device.record_presence(False, at(20)) is True
    row = fresh(device)
    assert not row.online and row.status_changed_at == at(20) and row.agent_version == "0.2.0"


def test_a_status_older_than_the_offline_sweep_does_not_bring_a_device_back(device: Device) -> None:
    device.record_presence(True, at(0))
    assert Device.objects.mark_silent_offline(cutoff=at(100), at=at(200)) == 1
    assert fresh(device).record_presence(True, at(150)) is False
    assert not fresh(device).online
    assert fresh(device).record_presence(True, at(250)) is True
    assert fresh(device).online


def test_the_newest_heartbeat_wins_whatever_order_the_batches_come_in(device: Device) -> None:
    Device.objects.touch_seen_bulk([Ingested(device.pk, 2, at(20), beat("0.3.0", cpu_percent=20.0))], at(21))
    Device.objects.touch_seen_bulk([Ingested(device.pk, 3, at(10), beat("0.2.0", cpu_percent=10.0))], at(11))
    row = fresh(device)
    assert row.last_heartbeat["cpu_percent"] == 20.0 and row.agent_version == "0.3.0"
    assert row.last_seen == at(21), "last_seen never moves back"
    assert row.telemetry_acked_seq == 3, "the watermark is the caller's, computed under the lock"
    Device.objects.touch_seen_bulk([Ingested(device.pk, 4)], seen_at=None)
    row = fresh(device)
    assert row.last_heartbeat["cpu_percent"] == 20.0 and row.last_seen == at(21) and row.telemetry_acked_seq == 4


def test_one_bulk_update_serves_several_devices(site: Site, enroll_device: Callable[..., Any]) -> None:
    first, second = (enroll_device(site, name=f"cam-{i}").device for i in range(2))
    Device.objects.touch_seen_bulk([Ingested(first.pk, 7, at(5), beat("1.0.0")), Ingested(second.pk, 9)], at(6))
    rows = {d.pk: d for d in Device.objects.filter(pk__in=[first.pk, second.pk])}
    assert rows[first.pk].agent_version == "1.0.0" and rows[first.pk].telemetry_acked_seq == 7
    assert rows[second.pk].last_heartbeat == {} and rows[second.pk].telemetry_acked_seq == 9
    assert rows[first.pk].last_seen == rows[second.pk].last_seen == at(6)


def test_anything_a_device_sends_moves_last_seen_forward_and_brings_it_online(device: Device) -> None:
    device.record_seen(at(10))
    row = fresh(device)
    assert row.online and row.last_seen == at(10) and row.status_changed_at == at(10)
    row.record_seen(at(5))
    assert fresh(device).last_seen == at(10), "an older message does not move last_seen back"


def test_reported_state_carries_the_agent_version(device: Device) -> None:
    device.record_reported({"phase": "active", "generation": 3}, "0.4.0")
    row = fresh(device)
    assert row.reported == {"phase": "active", "generation": 3} and row.agent_version == "0.4.0"


@pytest.mark.django_db(transaction=True)
def test_the_offline_sweep_skips_a_device_a_bridge_is_storing(device: Device) -> None:
    if connection.vendor != "postgresql":
        pytest.skip("row locks need PostgreSQL")
    device.record_presence(True, at(0))
    locked, release = threading.Event(), threading.Event()

    def bridge() -> None:
        try:
            with transaction.atomic():
                Device.objects.lock_watermarks([device.pk])
                locked.set()
                release.wait(10)
        finally:
            connection.close()

    thread = threading.Thread(target=bridge)
    thread.start()
    try:
        assert locked.wait(10)
        assert Device.objects.mark_silent_offline(cutoff=at(100), at=at(200)) == 0
        assert fresh(device).online
    finally:
        release.set()
        thread.join(10)
    assert Device.objects.mark_silent_offline(cutoff=at(100), at=at(200)) == 1


def test_revoking_takes_a_device_offline_once(device: Device) -> None:
    device.record_presence(True, at(0))
    assert Device.objects.filter(pk=device.pk).revoke(at(10)) == 1
    assert Device.objects.filter(pk=device.pk).revoke(at(20)) == 0
    row = fresh(device)
    assert row.is_revoked and row.revoked_at == at(10) and not row.online

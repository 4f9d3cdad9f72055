"""A device's page: its state beside what it should run, its timeline, model history and heartbeat, in few queries."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from fleet.models import Device, Site
from registry.models import ModelVersion
from rollouts.models import Rollout, RolloutDevice
from telemetry import alerts
from telemetry.models import Alert
from tests.dashboard.fixtures import open_alert, registry_model, reporting, with_event

pytestmark = pytest.mark.django_db


@pytest.fixture
def device(site: Site, enroll_device: Callable[..., Any]) -> Device:
    return enroll_device(site, name="cam-1").device


def page(client: Client, device: Device) -> str:
    response = client.get(f"/devices/{device.device_id}/")
    assert response.status_code == 200
    return response.content.decode()


def compared(body: str, field: str) -> str:
    """The row of the desired/reported table for ``field``, with its class."""
    found = re.search(rf'<tr( class="differs")? data-field="{field}">(.*?)</tr>', body, re.S)
    assert found, f"no row for {field}"
    return (found.group(1) or "") + found.group(2)


def wants(device: Device, version: str, **more: Any) -> None:
    Device.objects.filter(pk=device.pk).update(
        desired={"model": {"name": "detector", "version": version, "target": "cpu-int8"}, **more},
        desired_generation=4,
    )


def test_desired_and_reported_state_stand_side_by_side_with_differences_marked(
    viewer_client: Client, device: Device
) -> None:
    reporting(device, model_version="1.1.0", generation=3)
    wants(device, "1.0.0", rollback_to="1.0.0", config={"escalation_threshold": 0.4})

    body = page(viewer_client, device)

    version = compared(body, "Version")
    assert 'class="differs"' in version and ">1.0.0<" in version and "1.1.0" in version
    assert "differs: sent when the device is back" in version  # the camera is offline
    assert "differs: 1 behind" in compared(body, "Generation")
    assert 'class="differs"' not in compared(body, "Model") and ">detector<" in compared(body, "Model")
    assert "cpu-int8" in compared(body, "Bundle target") and "escalation_threshold=0.4" in body
    assert "differs from its desired state" in body


def test_a_device_that_runs_what_it_should_says_so(viewer_client: Client, device: Device) -> None:
    reporting(device, model_version="1.0.0", generation=4)
    wants(device, "1.0.0")
    body = page(viewer_client, device)
    assert "✓ runs its desired state" in body and 'class="differs"' not in body


def test_an_online_device_whose_update_failed_says_so_beside_the_version(viewer_client: Client, device: Device) -> None:
    device.record_presence(True, timezone.now())
    reporting(device, model_version="1.0.0", generation=4, phase="failed", error="sha256 mismatch")
    wants(device, "1.1.0")
    body = page(viewer_client, device)
    assert "differs: the update failed" in compared(body, "Version")
    assert 'data-testid="update-error"><strong>Update failed:</strong> sha256 mismatch' in body


def test_refused_updates_appear_in_the_timeline_with_their_reasons(viewer_client: Client, device: Device) -> None:
    with_event(device, "desired_rejected", generation=7, reason="bad_signature", detail="unknown key k9", current=3)
    with_event(device, "validation_failed", version="1.2.0", reason="downgrade", detail="older than 1.3.0")
    with_event(device, "model_swap", name="detector", version="1.3.0", sequence=3, previous="1.2.0", phase="active")

    body = page(viewer_client, device)

    timeline = re.search(r'<ol class="timeline".*?</ol>', body, re.S)
    assert timeline
    refusals = re.findall(r'<li class="tone-bad" data-testid="event" data-kind="(\w+)">', timeline.group(0))
    assert sorted(refusals) == ["desired_rejected", "validation_failed"]
    assert "Refused desired state, generation 7" in body and "bad_signature — unknown key k9" in body
    assert "Refused update to 1.2.0" in body and "downgrade — older than 1.3.0" in body
    assert "Now runs detector 1.3.0 (was 1.2.0)" in body


def test_the_timeline_shows_when_the_device_went_offline_and_came_back(viewer_client: Client, device: Device) -> None:
    now = timezone.now()
    rule = alerts.ensure_rules()["offline"]
    Alert.objects.create(
        rule=rule,
        device=device,
        state=Alert.State.RESOLVED,
        since=now - timedelta(hours=2),
        opened_at=now - timedelta(hours=2),
        resolved_at=now - timedelta(hours=1),
        value=4.5,
    )
    device.record_presence(True, now - timedelta(minutes=59))

    body = page(viewer_client, device)

    kinds = re.findall(r'data-testid="presence" data-kind="(\w+)"', body)
    assert kinds == ["online", "online", "offline"]  # newest first
    assert "Came online" in body and "Heard from again: offline alert cleared" in body
    assert "Silent: offline alert" in body and "4.5 heartbeat intervals without a word" in body


def test_the_model_history_lists_installs_and_rollouts_newest_first(viewer_client: Client, device: Device) -> None:
    old, new = ModelVersion.objects.filter(model=registry_model("detector", versions=2)).order_by("sequence")
    now = timezone.now()
    done = Rollout.objects.create(version=old, target={}, plan={}, state=Rollout.COMPLETED)
    RolloutDevice.objects.create(
        rollout=done, device=device, stage_index=0, target="cpu-fp32", state="active", sent_at=now - timedelta(days=2)
    )
    with_event(device, "model_swap", name="detector", version="1.0.0", previous=None, phase="active")
    failed = Rollout.objects.create(version=new, target={}, plan={}, state=Rollout.ABORTED)
    RolloutDevice.objects.create(
        rollout=failed,
        device=device,
        stage_index=0,
        target="cpu-fp32",
        state="failed",
        sent_at=now + timedelta(seconds=1),
        error="activation timed out",
    )

    body = page(viewer_client, device)

    history = re.search(r'data-testid="model-history">.*?</table>', body, re.S)
    assert history
    rows = re.findall(
        r'<tr class="tone-(\w+)" data-testid="install">.*?<td class="mono">([^<]+)</td><td>([^<]+)</td>'
        r"<td>([^<]+)</td>",
        history.group(0),
        re.S,
    )
    assert rows == [
        ("bad", "detector 1.1.0", f"sent by rollout #{failed.pk}", "failed: activation timed out"),
        ("ok", "detector 1.0.0", "installed by the device", "active"),
        ("ok", "detector 1.0.0", f"sent by rollout #{done.pk}", "active"),
    ]


def test_the_heartbeat_reads_with_units_and_nothing_says_none(viewer_client: Client, device: Device) -> None:
    Device.objects.filter(pk=device.pk).update(
        last_heartbeat={
            "ts": timezone.now().isoformat(),
            "agent_version": "0.3.1",
            "uptime_s": 93_780.0,
            "cpu_percent": 41.6,
            "memory_percent": 63.0,
            "disk_percent": 12.5,
            "disk_free_bytes": 2_000_000_000,
            "temperature_c": None,
            "cpu_freq_mhz": 1200.0,
            "cpu_freq_max_mhz": 2400.0,
            "outbox_depth": 1,
            "npu_load": None,
        },
        reported={"generation": None, "model_version": None, "phase": None, "error": None},
    )
    with_event(device, "pong", answered=None)

    body = page(viewer_client, device)

    beat = re.search(r'data-testid="heartbeat">.*?</dl>', body, re.S)
    assert beat
    assert "42\xa0%" in beat.group(0) and "1200\xa0MHz of 2400\xa0MHz" in beat.group(0)
    assert "1 d 2 h" in beat.group(0) and "1 record waiting" in beat.group(0) and "1.9\xa0GB" in beat.group(0)
    assert 'data-key="temperature_c">Temperature</dt><dd>—</dd>' in beat.group(0)
    assert 'data-key="npu_load">npu_load</dt><dd>—</dd>' in beat.group(0)
    # The stored documents are JSON (null); everything a person reads says — or never.
    assert not re.search(r"\bNone\b", body.replace("null", ""))


def test_a_device_never_heard_from_says_never_rather_than_blank(viewer_client: Client, device: Device) -> None:
    body = page(viewer_client, device)
    assert 'data-testid="last-seen">never<' in body and "No heartbeat yet." in body
    assert "No model installed or sent yet." in body and "no model yet" in body
    assert not re.search(r"\bNone\b", body)


def test_an_empty_chart_says_no_data_rather_than_drawing_blank_axes(viewer_client: Client, device: Device) -> None:
    body = page(viewer_client, device)
    charts = re.findall(r'data-chart="([\w-]+)"', body)
    assert charts == ["latency", "frames", "confidence", "confidence-histogram", "escalation", "health", "outbox"]
    # charts.js puts "No data in this range." in place of an empty canvas (the browser test watches it).
    assert "[data-series-message]" not in body and "data-series-message" in body


def test_the_device_page_query_count_does_not_grow_with_history_or_fleet(
    viewer_client: Client, device: Device, enroll_device: Callable[..., Any], other_site: Site
) -> None:
    def count() -> int:
        with CaptureQueriesContext(connection) as queries:
            page(viewer_client, device)
        return len(queries)

    with_event(device)
    few = count()
    version = registry_model("detector", versions=1).versions.get()
    for i in range(25):
        with_event(device, "model_swap", name="detector", version=f"1.{i}.0", phase="active")
        with_event(device, "desired_rejected", generation=i, reason="stale")
        rollout = Rollout.objects.create(version=version, target={}, plan={}, state=Rollout.COMPLETED)
        RolloutDevice.objects.create(rollout=rollout, device=device, stage_index=0, target="cpu-fp32")
    open_alert(device)
    for i in range(5):
        open_alert(enroll_device(other_site, name=f"hot-{i}").device)
    assert count() == few

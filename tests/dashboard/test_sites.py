"""The site page: what a viewer sees of a site, and the rollback only staff may post."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import time
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone

from core.models import AuditLog
from dashboard.views import recent_figures
from fleet.models import Device, Site
from registry.models import ModelVersion
from rollouts.models import Rollout, RolloutDevice
from tests.dashboard.fixtures import open_alert, registry_model, reporting, with_telemetry

pytestmark = pytest.mark.django_db

URL = "/sites/plant-a/"


@pytest.fixture
def cameras(site: Site, enroll_device: Callable[..., Any]) -> list[Device]:
    return [enroll_device(site, name=f"cam-{i}").device for i in range(2)]


@pytest.fixture
def running(cameras: list[Device]) -> Rollout:
    """A rollout of detector 1.1.0 running on the site's first camera, after an older one that completed."""
    old, new = ModelVersion.objects.filter(model=registry_model("detector", versions=2)).order_by("sequence")
    done = Rollout.objects.create(version=old, target={}, plan={}, state=Rollout.COMPLETED)
    RolloutDevice.objects.create(rollout=done, device=cameras[1], stage_index=0, target="cpu-fp32")
    rollout = Rollout.objects.create(version=new, target={}, plan={}, state=Rollout.RUNNING)
    RolloutDevice.objects.create(rollout=rollout, device=cameras[0], stage_index=0, target="cpu-fp32")
    return rollout


def test_a_site_page_shows_settings_devices_alerts_and_rollouts_newest_first(
    viewer_client: Client, site: Site, cameras: list[Device], running: Rollout
) -> None:
    Site.objects.filter(pk=site.pk).update(
        latency_budget_ms=80,
        timezone="Europe/Berlin",
        maintenance_window_start=time(2, 0),
        maintenance_window_end=time(4, 30),
    )
    reporting(cameras[0], model_version="1.1.0", phase="downloading")
    open_alert(cameras[1])

    response = viewer_client.get(URL)

    body = response.content.decode()
    assert response.status_code == 200
    assert 'data-testid="latency-budget">80 ms<' in body and "Europe/Berlin" in body and "02:00\N{EN DASH}04:30" in body
    assert 'data-testid="escalation-privacy">' in body
    assert "phase-downloading" in body and 'class="badge offline">temperature_high<' in body
    newest_first = [str(pk) for pk in Rollout.objects.order_by("-created_at", "-pk").values_list("pk", flat=True)]
    assert re.findall(r'data-rollout="(\d+)"', body) == newest_first and len(newest_first) == 2
    assert f"Stops rollout #{running.pk}" in body


def test_a_viewer_sees_no_rollback_form_and_a_post_is_refused(viewer_client: Client, running: Rollout) -> None:
    body = viewer_client.get(URL).content.decode()
    assert 'name="reason"' not in body and "Only admins and the operators of plant-a may roll it back." in body

    assert viewer_client.post(URL, {"reason": "I want to"}).status_code == 403

    running.refresh_from_db()
    assert running.state == Rollout.RUNNING and not AuditLog.objects.filter(action="site.rollback").exists()


def test_a_rollback_without_a_reason_is_refused_and_changes_nothing(admin_client: Client, running: Rollout) -> None:
    response = admin_client.post(URL, {"reason": "  "})
    assert response.status_code == 400 and 'data-testid="reason-error"' in response.content.decode()
    running.refresh_from_db()
    assert running.state == Rollout.RUNNING


def test_a_rollback_needs_the_csrf_token(admin_user: Any, running: Rollout) -> None:
    client = Client(enforce_csrf_checks=True)
    client.force_login(admin_user)
    assert client.post(URL, {"reason": "line 3 rejects"}).status_code == 403
    running.refresh_from_db()
    assert running.state == Rollout.RUNNING


def test_staff_roll_the_site_back_through_the_service_and_see_what_it_did(
    admin_client: Client, running: Rollout
) -> None:
    response = admin_client.post(URL, {"reason": "false rejects on line 3"}, follow=True)

    assert response.redirect_chain == [(URL, 302)]
    body = response.content.decode()
    assert "Plant A rolled back:" in body and "1 rollout stopped" in body
    running.refresh_from_db()
    assert running.state == Rollout.ABORTED and "false rejects on line 3" in running.halt_reason
    audit = AuditLog.objects.get(action="site.rollback")
    assert (audit.actor_label, audit.reason) == ("alice", "false rejects on line 3")


def test_a_rollback_with_nothing_to_return_to_says_so(admin_client: Client, cameras: list[Device]) -> None:
    Device.objects.filter(pk=cameras[0].pk).update(desired={"model": {"name": "detector", "version": "1.0.0"}})
    response = admin_client.post(URL, {"reason": "panic"}, follow=True)
    body = response.content.decode()
    assert response.status_code == 200 and 'class="message error"' in body and "nothing to return to" in body
    assert not AuditLog.objects.filter(action="site.rollback").exists()


def test_an_unknown_site_is_404(viewer_client: Client, site: Site) -> None:
    assert viewer_client.get("/sites/nowhere/").status_code == 404


def test_each_device_row_shows_its_p95_latency_and_escalated_share_of_the_last_hours(
    viewer_client: Client, site: Site, enroll_device: Callable[..., Any]
) -> None:
    busy = with_telemetry(enroll_device(site, "cam-busy").device)
    quiet = enroll_device(site, "cam-quiet").device
    figures = recent_figures([busy], timezone.now())[busy.device_id]

    body = viewer_client.get(URL).content.decode()

    busy_row = re.search(rf'<tr data-device="{busy.device_id}">.*?</tr>', body, re.S).group(0)  # type: ignore[union-attr]
    quiet_row = re.search(rf'<tr data-device="{quiet.device_id}">.*?</tr>', body, re.S).group(0)  # type: ignore[union-attr]
    assert figures["latency_p95_ms"] > 0 and 0 < figures["escalated_pct"] <= 100
    assert f'data-testid="p95">{figures["latency_p95_ms"]:.1f} ms<' in busy_row
    assert f'data-testid="escalated">{figures["escalated_pct"]:.1f} %<' in busy_row
    assert 'data-testid="p95"><span class="muted"' in quiet_row

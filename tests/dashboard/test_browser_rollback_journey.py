"""The operator's day in one test: from the fleet page to the unhealthy device's site, a rollback, and convergence.

Real published versions of the project's classifier, a completed rollout that
makes 1.0.0 the site's known-good version, a running rollout of 2.0.0 with one
camera raising an alert and one offline: the operator finds the site from the
overview's Unhealthy column, sees why on the site page, rolls the site back
with a reason, confirms what the dialog names, and watches the devices
converge without reloading, the offline one included once it returns.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from django.utils import timezone

from fleet import services as fleet
from fleet.models import Device, Site
from registry.models import ModelVersion
from rollouts.models import Rollout, RolloutDevice
from tests.dashboard.conftest import require_browser, sign_in
from tests.dashboard.fixtures import open_alert
from tests.rollouts.conftest import report, versions  # noqa: F401 - the published 1.0.0 and 2.0.0

pytestmark = pytest.mark.browser

expect = require_browser().expect


def rollout_of(version: ModelVersion, devices: list[Device], state: str) -> Rollout:
    """A rollout of ``version`` that reached ``devices`` (each active on it), in ``state``."""
    finished = timezone.now() if state == Rollout.COMPLETED else None
    rollout = Rollout.objects.create(
        version=version, target={"sites": ["plant-a"]}, plan={}, state=state, finished_at=finished
    )
    RolloutDevice.objects.bulk_create(
        [
            RolloutDevice(rollout=rollout, device=d, stage_index=0, target="cpu-fp32", state=RolloutDevice.ACTIVE)
            for d in devices
        ]
    )
    return rollout


@pytest.fixture
def plant_a_on_2(
    versions: tuple[ModelVersion, ModelVersion],  # noqa: F811
    site: Site,
    other_site: Site,
    enroll_device: Callable[..., Any],
) -> tuple[list[Device], Rollout]:
    """Three cameras at plant-a that went 1.0.0 (completed rollout) -> 2.0.0 (running); one at plant-b."""
    v1, v2 = versions
    cameras = [enroll_device(site, name=f"cam-{i}", agent_version="0.1.0").device for i in range(3)]
    enroll_device(other_site, name="cam-b", agent_version="0.1.0")
    for camera in cameras:
        fleet.assign_model(camera, v1, actor="test")
        report(camera, v1)
    rollout_of(v1, cameras, Rollout.COMPLETED)
    for camera in cameras:
        fleet.assign_model(camera, v2, actor="test")
        report(camera, v2)
        camera.record_presence(True, timezone.now())
    running = rollout_of(v2, cameras, Rollout.RUNNING)
    cameras[2].record_presence(False, timezone.now())
    open_alert(Device.objects.get(pk=cameras[0].pk))
    return [Device.objects.get(pk=c.pk) for c in cameras], running


def test_an_operator_finds_the_unhealthy_site_rolls_it_back_and_watches_it_converge(
    page: Any,
    plant_a_on_2: tuple[list[Device], Rollout],
    versions: tuple[ModelVersion, ModelVersion],  # noqa: F811
    admin_user: Any,
    screenshot: Callable[[str], None],
) -> None:
    (alerting, healthy, offline), running = plant_a_on_2
    v1, _ = versions
    sign_in(page, "alice", "pw-alice-123")
    plant_a = page.locator('tr[data-site="plant-a"]')
    unhealthy = Device.objects.filter(site__slug="plant-a", alerts__state="open").distinct().count()
    assert unhealthy >= 1
    expect(plant_a.get_by_test_id("unhealthy")).to_have_text(str(unhealthy))
    plant_a.get_by_role("link", name="Plant A").click()

    page.wait_for_url("**/sites/plant-a/")
    row = page.locator(f'tr[data-device="{alerting.device_id}"]')
    expect(row.get_by_test_id("device-alerts")).to_contain_text("temperature_high")
    expect(page.get_by_test_id("rollback-preview")).to_contain_text("back to 1.0.0: 3 devices (1 offline")
    page.get_by_label("Reason (required)").fill("false rejects on line 3 since 2.0.0")
    asked: list[str] = []
    page.once("dialog", lambda dialog: (asked.append(dialog.message), dialog.accept()))
    page.get_by_role("button", name="Roll back plant-a").click()

    expect(page.get_by_test_id("messages")).to_contain_text("Plant A rolled back: 3 devices sent")
    assert asked == [
        "Roll Plant A back? 3 devices go back to parts 1.0.0 (1 offline, sent when they return). "
        f"Stops rollout #{running.pk}."
    ]
    running.refresh_from_db()
    assert running.state == Rollout.ABORTED
    expect(page.get_by_test_id("site-convergence")).to_contain_text("0 of 3")
    page.evaluate("() => { window.notReloaded = true; }")

    # The online cameras apply the signed rollback; the offline one has it waiting.
    for camera in (alerting, healthy):
        report(camera, v1, phase="rolled_back")
    expect(page.get_by_test_id("site-convergence")).to_contain_text("2 of 3")
    offline_row = page.locator(f'tr[data-device="{offline.device_id}"]')
    expect(offline_row.get_by_test_id("desired")).to_contain_text("when back online")
    screenshot("site-converging")

    offline.record_presence(True, timezone.now())
    report(offline, v1, phase="rolled_back")
    expect(offline_row.get_by_test_id("state")).to_have_text("online")
    expect(page.get_by_test_id("site-convergence")).to_contain_text("3 of 3")
    assert page.evaluate("() => window.notReloaded === true")
    assert not Device.objects.get(name="cam-b").desired.get("model"), "plant-b was not touched"

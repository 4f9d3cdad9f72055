"""The dashboard in headless Chromium: sign-in, device states, charts from real telemetry, acknowledging alerts."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from fleet.models import Device, Site
from rollouts.models import Rollout, RolloutDevice
from telemetry.models import Alert
from tests.dashboard.conftest import require_browser, sign_in
from tests.dashboard.fixtures import (
    open_alert,
    registry_model,
    reporting,
    with_event,
    with_heartbeats_only,
    with_telemetry,
)

pytestmark = pytest.mark.browser

expect = require_browser().expect

DEVICE_CHARTS = ("latency", "frames", "confidence", "confidence-histogram", "escalation", "health", "outbox")


@pytest.fixture
def fleet(site: Site, other_site: Site, enroll_device: Callable[..., Any]) -> list[Device]:
    online = reporting(with_telemetry(enroll_device(site, "cam-online").device), phase="active")
    online.record_presence(True, online.created_at)
    offline = enroll_device(site, "cam-offline").device
    enroll_device(other_site, "cam-b")
    return [online, offline]


def chart_points(page: Any, chart: str) -> list[int]:
    """How many data points each dataset of the drawn Chart.js chart holds, read from the chart instance."""
    return page.evaluate(
        "name => Chart.getChart(document.querySelector(`canvas[data-chart='${name}']`)).data.datasets"
        ".map(d => d.data.filter(v => v !== null && (typeof v !== 'object' || v.y !== null)).length)",
        chart,
    )


def test_signing_in_leads_to_the_overview_and_a_site_row_to_its_devices(
    page: Any, fleet: list[Device], admin_user: Any, screenshot: Callable[[str], None]
) -> None:
    online, offline = fleet
    sign_in(page, "alice", "pw-alice-123")
    expect(page.get_by_test_id("online-count")).to_have_text("1")
    expect(page.get_by_test_id("device-count")).to_have_text("3")
    plant_a = page.locator('tr[data-site="plant-a"]')
    expect(plant_a.get_by_test_id("devices")).to_have_text("2")
    expect(plant_a.get_by_test_id("online")).to_have_text("1")
    expect(page.locator('tr[data-site="plant-b"]').get_by_test_id("offline")).to_have_text("1")
    screenshot("overview")
    plant_a.get_by_role("link", name="Plant A").click()
    page.wait_for_url("**/sites/plant-a/")
    expect(page.locator(f'tr[data-device="{online.device_id}"] [data-testid=state]')).to_have_text("online")
    expect(page.locator(f'tr[data-device="{offline.device_id}"] [data-testid=state]')).to_have_text("offline")


def test_staff_roll_a_site_back_from_its_page(page: Any, fleet: list[Device], admin_user: Any, tmp_path: Path) -> None:
    version = registry_model("detector").versions.get()
    rollout = Rollout.objects.create(version=version, target={}, plan={}, state=Rollout.RUNNING)
    RolloutDevice.objects.create(rollout=rollout, device=fleet[0], stage_index=0, target="cpu-fp32")
    sign_in(page, "alice", "pw-alice-123")
    page.get_by_role("textbox", name="Site").fill("plant-a")
    page.get_by_role("button", name="Filter", exact=True).click()
    expect(page.locator("tr[data-site]")).to_have_count(1)
    expect(page.locator('tr[data-site="plant-a"]').get_by_test_id("rollouts")).to_have_text("1 running")
    page.screenshot(path=str(tmp_path / "overview.png"), full_page=True)
    page.get_by_role("link", name="Plant A").click()
    expect(page.get_by_test_id("rollback-stops")).to_contain_text(f"#{rollout.pk}")
    page.get_by_label("Reason (required)").fill("false rejects on line 3")
    asked: list[str] = []
    page.once("dialog", lambda dialog: (asked.append(dialog.message), dialog.accept()))
    page.get_by_role("button", name="Roll back plant-a").click()
    expect(page.get_by_test_id("messages")).to_contain_text("Plant A rolled back")
    page.screenshot(path=str(tmp_path / "site.png"), full_page=True)
    assert asked and asked[0].startswith("Roll Plant A back?") and f"Stops rollout #{rollout.pk}." in asked[0]
    rollout.refresh_from_db()
    assert rollout.state == Rollout.ABORTED
    assert (tmp_path / "overview.png").stat().st_size > 0 and (tmp_path / "site.png").stat().st_size > 0


def test_a_wrong_password_keeps_you_on_the_login_page(page: Any, viewer_user: Any) -> None:
    page.goto("/")
    page.get_by_label("Username").fill("victor")
    page.get_by_label("Password").fill("wrong")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_test_id("login-error")).to_be_visible()


def test_a_device_page_draws_every_chart_from_the_devices_telemetry(
    page: Any, fleet: list[Device], viewer_user: Any, screenshot: Callable[[str], None]
) -> None:
    device = fleet[0]
    with_event(device, "model.swap", version="1.0.0")
    sign_in(page, "victor", "pw-victor-123", path="/sites/plant-a/")
    page.get_by_role("link", name="cam-online").click()
    page.get_by_test_id("range-1h").click()
    page.wait_for_url(f"**/devices/{device.device_id}/?range=1h")
    expect(page.get_by_test_id("device-charts")).to_have_attribute("data-state", "ready")
    for chart in DEVICE_CHARTS:
        points = int(page.get_by_test_id(f"chart-{chart}").get_attribute("data-points"))
        assert points > 0, chart
        assert max(chart_points(page, chart)) > 0, chart
    # 20 minutes of windows at minute resolution: one point per minute.
    assert max(chart_points(page, "latency")) >= 19
    expect(page.get_by_test_id("update-phase")).to_contain_text("active")
    expect(page.get_by_test_id("event")).to_contain_text("model.swap")
    screenshot("device")


def test_a_device_without_telemetry_says_so_instead_of_drawing(
    page: Any, fleet: list[Device], viewer_user: Any
) -> None:
    sign_in(page, "victor", "pw-victor-123", path=f"/devices/{fleet[1].device_id}/")
    expect(page.get_by_test_id("device-charts")).to_have_attribute("data-state", "empty")
    expect(page.get_by_text("No telemetry in this range yet.")).to_be_visible()


def test_a_device_with_heartbeats_but_no_windows_draws_its_health_and_names_what_is_missing(
    page: Any, fleet: list[Device], viewer_user: Any
) -> None:
    device = with_heartbeats_only(fleet[1])
    sign_in(page, "victor", "pw-victor-123", path=f"/devices/{device.device_id}/?range=1h")
    expect(page.get_by_test_id("device-charts")).to_have_attribute("data-state", "ready")
    assert int(page.get_by_test_id("chart-health").get_attribute("data-points")) >= 9
    expect(page.get_by_test_id("chart-latency")).to_be_hidden()
    expect(page.get_by_text("No data in this range for: Latency (ms), Frames")).to_be_visible()


def test_acknowledging_an_alert_in_the_page_acknowledges_it_in_the_database(
    page: Any, fleet: list[Device], admin_user: Any, screenshot: Callable[[str], None]
) -> None:
    alert = open_alert(fleet[0])
    sign_in(page, "alice", "pw-alice-123", path="/alerts/")
    row = page.locator(f'tr[data-alert="{alert.pk}"]')
    expect(row.get_by_test_id("alert-state")).to_have_text("open")
    screenshot("alerts")
    row.get_by_role("button", name="Acknowledge").click()
    expect(row.get_by_test_id("alert-state")).to_have_text("acknowledged")
    expect(row.get_by_role("button", name="Acknowledge")).to_have_count(0)
    alert.refresh_from_db()
    assert alert.state == Alert.State.ACKNOWLEDGED and alert.acknowledged_by == "alice"


def test_a_viewer_gets_no_acknowledge_button_and_the_api_refuses_one_anyway(
    page: Any, fleet: list[Device], viewer_user: Any
) -> None:
    alert = open_alert(fleet[0])
    sign_in(page, "victor", "pw-victor-123", path="/alerts/")
    row = page.locator(f'tr[data-alert="{alert.pk}"]')
    expect(row.get_by_test_id("alert-state")).to_have_text("open")
    expect(page.get_by_role("button", name="Acknowledge")).to_have_count(0)
    # The same request the button would send, with the session and its CSRF token.
    status = page.evaluate(
        """async url => (await fetch(url, {method: "POST", credentials: "same-origin",
             headers: {"Content-Type": "application/json",
                       "X-CSRFToken": document.querySelector('meta[name="csrf-token"]').content},
             body: "{}"})).status""",
        f"/api/v1/alerts/{alert.pk}/acknowledge/",
    )
    assert status == 403
    alert.refresh_from_db()
    assert alert.state == Alert.State.OPEN


def test_the_models_page_lists_bundles_per_target(
    page: Any, viewer_user: Any, screenshot: Callable[[str], None], db: None
) -> None:
    registry_model("detector", versions=2)
    sign_in(page, "victor", "pw-victor-123", path="/models/")
    expect(page.locator('tr[data-bundle="detector@1.1.0/cpu-int8"] [data-testid=latency-ratio]')).to_have_text(
        "0.62\N{MULTIPLICATION SIGN}"
    )
    expect(page.get_by_test_id("alias")).to_have_text("production → 1.1.0")
    screenshot("models")

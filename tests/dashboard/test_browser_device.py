"""The device page and the live parts of the pages in headless Chromium: charts from real telemetry, updates
without a reload, accessibility (axe-core) and a phone-sized screen."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from django.utils import timezone

from fleet.models import Device, Site
from tests.dashboard.conftest import accessibility_problems, overflows_at, require_browser, sign_in
from tests.dashboard.fixtures import reporting, with_event, with_heartbeats_only, with_telemetry

pytestmark = pytest.mark.browser

expect = require_browser().expect

CHARTS = ("latency", "frames", "confidence", "confidence-histogram", "escalation", "health", "outbox")
# Live parts poll every second in the browser tests (the page fixture): an update shows well within this.
LIVE_MS = 12_000


@pytest.fixture
def cameras(site: Site, enroll_device: Callable[..., Any]) -> list[Device]:
    """An online camera with 20 minutes of telemetry that runs what it should, and one never heard from."""
    online = reporting(with_telemetry(enroll_device(site, "cam-online").device), phase="active")
    Device.objects.filter(pk=online.pk).update(desired={"model": {"name": "detector", "version": "1.0.0"}})
    online.record_presence(True, timezone.now())
    offline = enroll_device(site, "cam-offline").device
    return [online, offline]


def chart_state(page: Any, chart: str) -> tuple[int, bool]:
    """How many points a chart shows, and whether it says "no data" in place of its canvas."""
    canvas = page.get_by_test_id(f"chart-{chart}")
    points = int(canvas.get_attribute("data-points") or 0)
    figure = page.locator("figure", has=canvas)
    return points, figure.get_by_test_id("no-data").is_visible()


def test_a_device_page_draws_every_chart_from_real_telemetry_and_passes_axe(
    page: Any, cameras: list[Device], viewer_user: Any, screenshot: Callable[[str], None]
) -> None:
    device = cameras[0]
    with_event(device, "desired_rejected", generation=9, reason="bad_signature", detail="unknown key k9", current=1)
    with_event(device, "model_swap", name="detector", version="1.0.0", previous=None, phase="active")
    sign_in(page, "victor", "pw-victor-123", path=f"/devices/{device.device_id}/?range=1h")
    expect(page.get_by_test_id("device-charts")).to_have_attribute("data-state", "ready")

    for chart in CHARTS:
        points, no_data = chart_state(page, chart)
        assert points > 0 and not no_data, chart
    # 20 minutes of windows at minute resolution: a point a minute, in frames per second.
    assert int(page.get_by_test_id("chart-frames").get_attribute("data-points")) >= 19
    frames_per_s = page.evaluate(
        "() => Chart.getChart(document.querySelector(\"canvas[data-chart='frames']\"))"
        ".data.datasets[0].data.map(p => p.y)"
    )
    assert max(frames_per_s) < 10  # 2 windows of 50 frames a minute: under 2 frames/s, not 100 a step
    expect(page.get_by_test_id("convergence")).to_contain_text("runs its desired state")
    expect(page.locator('[data-kind="desired_rejected"]')).to_contain_text("bad_signature")
    expect(page.get_by_test_id("model-history")).to_contain_text("installed by the device")
    assert accessibility_problems(page) == []
    screenshot("device")

    expect(page.get_by_test_id("chart-latency")).to_be_visible()
    assert overflows_at(page, 390) == 0, "the device page scrolls sideways at 390 px"
    screenshot("device-390")


def test_a_chart_without_data_says_so_where_it_would_be(page: Any, cameras: list[Device], viewer_user: Any) -> None:
    device = with_heartbeats_only(cameras[1])
    sign_in(page, "victor", "pw-victor-123", path=f"/devices/{device.device_id}/?range=1h")
    expect(page.get_by_test_id("device-charts")).to_have_attribute("data-state", "ready")
    for chart in CHARTS:
        points, no_data = chart_state(page, chart)
        assert (points > 0) != no_data, chart  # points, or the words "no data": never a blank canvas
    assert chart_state(page, "health")[0] >= 9 and chart_state(page, "outbox")[0] >= 9
    expect(page.locator("figure", has=page.get_by_test_id("chart-latency")).get_by_test_id("no-data")).to_have_text(
        "No data in this range."
    )


def test_the_site_page_shows_a_device_coming_online_and_converging_without_a_reload(
    page: Any, cameras: list[Device], admin_user: Any, screenshot: Callable[[str], None]
) -> None:
    returning = reporting(cameras[1], model_version="1.1.0", phase="active")
    Device.objects.filter(pk=returning.pk).update(desired={"model": {"name": "detector", "version": "1.0.0"}})
    sign_in(page, "alice", "pw-alice-123", path="/sites/plant-a/")
    row = page.locator(f'tr[data-device="{returning.device_id}"]')
    expect(row.get_by_test_id("state")).to_have_text("offline")
    expect(row.get_by_test_id("desired")).to_contain_text("1.0.0")
    expect(row.get_by_test_id("desired")).to_contain_text("when back online")
    expect(page.get_by_test_id("site-convergence")).to_contain_text("1 of 2")
    assert accessibility_problems(page) == []
    screenshot("site")
    page.evaluate("() => { window.notReloaded = true; }")

    # The rolled-back camera returns and applies its desired version.
    returning.record_presence(True, timezone.now())
    reporting(returning, model_version="1.0.0", phase="rolled_back")

    expect(row.get_by_test_id("state")).to_have_text("online", timeout=LIVE_MS)
    expect(row.get_by_test_id("desired")).to_have_text("✓ 1.0.0", timeout=LIVE_MS)
    expect(page.get_by_test_id("site-convergence")).to_contain_text("2 of 2 devices with a model assigned run it")
    assert page.evaluate("() => window.notReloaded === true")

    assert overflows_at(page, 390) == 0, "the site page scrolls sideways at 390 px"


def test_the_device_page_shows_its_state_and_events_change_without_a_reload(
    page: Any, cameras: list[Device], viewer_user: Any
) -> None:
    device = cameras[1]
    sign_in(page, "victor", "pw-victor-123", path=f"/devices/{device.device_id}/")
    expect(page.get_by_test_id("state")).to_have_text("offline")
    expect(page.get_by_test_id("last-seen")).to_have_text("never")
    page.evaluate("() => { window.notReloaded = true; }")

    device.record_presence(True, timezone.now())
    with_event(device, "validation_failed", version="1.2.0", reason="downgrade", detail="older than 1.3.0")

    expect(page.get_by_test_id("state")).to_have_text("online", timeout=LIVE_MS)
    expect(page.locator('[data-kind="validation_failed"]')).to_contain_text("Refused update to 1.2.0")
    expect(page.locator('[data-testid="presence"][data-kind="online"]')).to_contain_text("Came online")
    assert page.evaluate("() => window.notReloaded === true")


def test_the_overview_counts_follow_the_fleet_without_a_reload(
    page: Any, cameras: list[Device], viewer_user: Any
) -> None:
    sign_in(page, "victor", "pw-victor-123")
    expect(page.get_by_test_id("online-count")).to_have_text("1")
    plant_a = page.locator('tr[data-site="plant-a"]')
    expect(plant_a.get_by_test_id("online")).to_have_text("1")

    cameras[1].record_presence(True, timezone.now())

    expect(page.get_by_test_id("online-count")).to_have_text("2", timeout=LIVE_MS)
    expect(plant_a.get_by_test_id("online")).to_have_text("2", timeout=LIVE_MS)
    expect(plant_a.get_by_test_id("offline")).to_have_text("0")


def test_a_quiet_poll_leaves_the_page_alone_and_a_failed_one_says_so(
    page: Any, cameras: list[Device], viewer_user: Any, screenshot: Callable[[str], None]
) -> None:
    sign_in(page, "victor", "pw-victor-123", path="/sites/plant-a/")
    table = page.locator('[data-live="site-devices"]')
    next_poll = """() => new Promise(done => document.body.addEventListener("htmx:afterRequest",
                     e => e.detail.elt.matches("[data-live]") && done(), { once: false }))"""
    # The first answer after the page's own rendering is taken in; from then on the same answer is not.
    page.evaluate(next_poll)
    page.evaluate("() => { document.querySelector('[data-live=site-devices] table').dataset.kept = 'yes'; }")
    page.evaluate(next_poll)
    expect(table.locator("table")).to_have_attribute("data-kept", "yes")

    page.route("**/live/sites/**", lambda route: route.fulfill(status=503, body="down for maintenance"))
    expect(page.locator("[data-live-note]")).to_contain_text("the server answered 503", timeout=LIVE_MS)
    assert accessibility_problems(page) == []
    page.unroute("**/live/sites/**")
    expect(page.locator("[data-live-note]")).to_have_count(0, timeout=LIVE_MS)
    screenshot("site-live")

"""The fragments pages poll with htmx: who may fetch them, what they show, and that they cost what their pages cost."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from fleet.models import Device, Site
from rollouts.models import Rollout, RolloutDevice
from tests.dashboard.fixtures import open_alert, registry_model, reporting, with_event

pytestmark = pytest.mark.django_db

HTMX = {"HTTP_HX_REQUEST": "true"}


@pytest.fixture
def cameras(site: Site, enroll_device: Callable[..., Any]) -> list[Device]:
    return [enroll_device(site, name=f"cam-{i}").device for i in range(2)]


def fragments(device: Device) -> list[str]:
    return ["/live/fleet/", f"/live/sites/{device.site.slug}/devices/", f"/live/devices/{device.device_id}/"]


def desired(device: Device, version: str) -> None:
    Device.objects.filter(pk=device.pk).update(desired={"model": {"name": "detector", "version": version}})


def table(body: str, testid: str) -> str:
    found = re.search(rf'<table class="dense" data-testid="{testid}">.*?</table>', body, re.S)
    assert found, f"no {testid} table"
    return found.group(0)


# --- who may fetch them ---------------------------------------------------------------------------


def test_anonymous_visitors_are_sent_to_the_login_page(client: Client, cameras: list[Device]) -> None:
    for path in fragments(cameras[0]):
        response = client.get(path)
        assert response.status_code == 302 and response["Location"].startswith("/login/?next=/live/"), path


def test_an_htmx_poll_after_the_session_ended_sends_the_whole_page_to_the_login_form(
    client: Client, cameras: list[Device]
) -> None:
    for path in fragments(cameras[0]):
        response = client.get(path, HTTP_HX_CURRENT_URL="http://testserver/sites/plant-a/?page=2", **HTMX)
        # Not a redirect htmx would follow and swap a login form into the table.
        assert response.status_code == 401 and response.content == b"", path
        assert response["HX-Redirect"] == "/login/?next=%2Fsites%2Fplant-a%2F%3Fpage%3D2"


def test_the_login_redirect_of_a_poll_never_names_another_host(client: Client, cameras: list[Device]) -> None:
    for current in ("https://evil.example//evil.example/x", "javascript:alert(1)", ""):
        response = client.get("/live/fleet/", HTTP_HX_CURRENT_URL=current, **HTMX)
        assert response["HX-Redirect"] == "/login/?next=%2F", current


def test_an_unknown_site_or_device_is_404(viewer_client: Client, site: Site) -> None:
    assert viewer_client.get("/live/sites/nowhere/devices/").status_code == 404
    assert viewer_client.get("/live/devices/dev-nope/").status_code == 404


# --- fleet overview -----------------------------------------------------------------------------


def test_the_fleet_fragment_carries_the_tiles_and_the_sites_table_out_of_band(
    viewer_client: Client, cameras: list[Device]
) -> None:
    open_alert(cameras[1])  # the hot camera comes online
    body = viewer_client.get("/live/fleet/", **HTMX).content.decode()
    assert 'data-testid="online-count">1<' in body and 'data-testid="device-count">2<' in body
    assert '<div id="fleet-sites" hx-swap-oob="innerHTML">' in body and '<tr data-site="plant-a">' in body
    assert "<html" not in body and "<form" not in body

    Device.objects.filter(pk=cameras[0].pk).update(online=True)
    body = viewer_client.get("/live/fleet/", **HTMX).content.decode()
    assert 'data-testid="online-count">2<' in body


def test_the_fleet_fragment_shows_the_pages_own_rows_and_keeps_its_filter(
    viewer_client: Client, cameras: list[Device], other_site: Site
) -> None:
    page = viewer_client.get("/", {"q": "plant-b", "sort": "-devices"}).content.decode()
    assert 'hx-get="/live/fleet/?q=plant-b&amp;sort=-devices"' in page and 'hx-trigger="every 5s' in page
    fragment = viewer_client.get("/live/fleet/", {"q": "plant-b", "sort": "-devices"}, **HTMX).content.decode()
    assert table(fragment, "sites") == table(page, "sites")
    assert re.findall(r'<tr data-site="([^"]+)">', fragment) == ["plant-b"]


def test_a_bad_filter_is_not_polled_and_its_fragment_is_refused(viewer_client: Client, site: Site) -> None:
    page = viewer_client.get("/", {"sort": "colour"})
    assert page.status_code == 400 and "hx-get" not in page.content.decode()
    assert viewer_client.get("/live/fleet/", {"sort": "colour"}, **HTMX).status_code == 400


# --- site page ------------------------------------------------------------------------------------


def test_the_site_fragment_is_the_site_pages_device_table(viewer_client: Client, cameras: list[Device]) -> None:
    reporting(cameras[0], model_version="1.1.0", phase="active")
    desired(cameras[0], "1.0.0")
    page = viewer_client.get("/sites/plant-a/").content.decode()
    assert 'hx-get="/live/sites/plant-a/devices/?page=1"' in page
    fragment = viewer_client.get("/live/sites/plant-a/devices/", {"page": 1}, **HTMX).content.decode()
    assert table(fragment, "devices") == table(page, "devices")


def test_a_site_row_shows_desired_against_reported_until_the_device_converges(
    viewer_client: Client, cameras: list[Device]
) -> None:
    device = reporting(cameras[0], model_version="1.1.0", phase="active")
    desired(device, "1.0.0")  # rolled back while the camera is offline

    def row() -> str:
        body = viewer_client.get("/live/sites/plant-a/devices/", **HTMX).content.decode()
        found = re.search(rf'<tr data-device="{device.device_id}">(.*?)</tr>', body, re.S)
        assert found
        return found.group(1)

    before = row()
    assert 'data-testid="state">offline<' in before and 'class="badge pending"' in before
    assert '→ <span class="mono">1.0.0</span>' in before and "when back online" in before

    device.record_presence(True, timezone.now())
    reporting(device, model_version="1.0.0", phase="rolled_back")
    after = row()
    assert 'data-testid="state">online<' in after and "✓ <span" in after and "pending" not in after


def test_the_site_table_says_how_many_devices_run_their_desired_version(
    viewer_client: Client, cameras: list[Device], enroll_device: Callable[..., Any], site: Site
) -> None:
    waiting, done = cameras
    reporting(waiting, model_version="1.1.0")
    reporting(done, model_version="1.0.0")
    enroll_device(site, name="unassigned")
    for device in cameras:
        desired(device, "1.0.0")

    def summary() -> str:
        body = viewer_client.get("/live/sites/plant-a/devices/", **HTMX).content.decode()
        found = re.search(r'data-testid="site-convergence">(.*?)</div>', body, re.S)
        assert found
        return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", "", found.group(1))).strip()

    assert summary() == (
        "50 % 1 of 2 devices with a model assigned runs it; 1 still to change, "
        "1 of them offline (sent it when they return)."
    )
    reporting(waiting, model_version="1.0.0")
    assert summary() == "100 % 2 of 2 devices with a model assigned run it."


def test_the_site_fragment_follows_the_pages_page(viewer_client: Client, site: Site) -> None:
    Device.objects.bulk_create([Device(site=site, name=f"cam-{i:03d}", device_id=f"d-{i:03d}") for i in range(105)])
    body = viewer_client.get("/live/sites/plant-a/devices/", {"page": 2}, **HTMX).content.decode()
    assert re.findall(r'<tr data-device="([^"]+)">', body) == [f"d-{i:03d}" for i in range(100, 105)]


# --- device page -----------------------------------------------------------------------------------


def test_the_device_fragment_is_the_pages_live_part(viewer_client: Client, cameras: list[Device]) -> None:
    device = reporting(cameras[0], phase="failed", error="reference outputs differ")
    with_event(device, "desired_rejected", generation=7, reason="bad_signature", detail="key k9 unknown", current=3)
    page = viewer_client.get(f"/devices/{device.device_id}/").content.decode()
    assert f'hx-get="/live/devices/{device.device_id}/"' in page
    fragment = viewer_client.get(f"/live/devices/{device.device_id}/", **HTMX).content.decode()
    assert "<html" not in fragment and "data-chart" not in fragment
    for part in ('data-testid="state">offline<', "reference outputs differ", "bad_signature", 'data-testid="compare"'):
        assert part in fragment and part in page, part


def test_the_device_fragment_follows_the_database(viewer_client: Client, cameras: list[Device]) -> None:
    device = cameras[0]
    url = f"/live/devices/{device.device_id}/"
    assert 'data-testid="state">offline<' in viewer_client.get(url, **HTMX).content.decode()
    device.record_presence(True, timezone.now())
    with_event(device, "validation_failed", version="1.1.0", reason="downgrade", detail="older than 1.2.0")
    body = viewer_client.get(url, **HTMX).content.decode()
    assert 'data-testid="state">online<' in body and "Came online" in body
    assert "Refused update to 1.1.0" in body and "downgrade" in body


# --- query counts ----------------------------------------------------------------------------------


def grow(sites: int, devices: int) -> None:
    """``sites`` more sites of ``devices`` devices each: half online, desired and reported versions apart,
    in a running rollout, with open alerts and events."""
    version = registry_model(f"fleet-{sites}-{devices}").versions.get()
    made = Site.objects.bulk_create([Site(slug=f"g{sites}-{i}", name=f"Grown {sites} site {i}") for i in range(sites)])
    rows = Device.objects.bulk_create(
        [
            Device(
                site=s,
                name=f"cam-{s.pk}-{j}",
                device_id=f"dev-{s.pk}-{j}",
                online=j % 2 == 0,
                reported={"model_name": "detector", "model_version": f"1.{j % 2}.0", "phase": "active"},
                desired={"model": {"name": "detector", "version": "1.0.0"}},
            )
            for s in made
            for j in range(devices)
        ]
    )
    rollout = Rollout.objects.create(version=version, target={}, plan={}, state=Rollout.RUNNING)
    RolloutDevice.objects.bulk_create(
        [RolloutDevice(rollout=rollout, device=d, stage_index=0, target="cpu-fp32") for d in rows[::2]]
    )
    for device in rows[:: max(1, len(rows) // 3)]:
        open_alert(device)
        with_event(device, "model_swap", name="detector", version="1.0.0", phase="active")


def queries(client: Client, path: str, **headers: Any) -> int:
    with CaptureQueriesContext(connection) as captured:
        response = client.get(path, **headers)
        assert response.status_code == 200, path
    return len(captured)


@pytest.mark.parametrize(
    "page, fragment",
    [
        ("/", "/live/fleet/"),
        ("/?alerts=on&sort=-alerts", "/live/fleet/?alerts=on&sort=-alerts"),
        ("/sites/{slug}/", "/live/sites/{slug}/devices/"),
        ("/devices/{device_id}/", "/live/devices/{device_id}/"),
    ],
)
def test_a_fragment_costs_no_more_queries_than_its_page_whatever_the_fleets_size(
    admin_client: Client, page: str, fragment: str
) -> None:
    def count() -> tuple[int, int]:
        # The newest device with events, alerts and a rollout: each grown fleet brings a busier one.
        device = Device.objects.filter(events__isnull=False).order_by("-pk").first()
        assert device is not None
        names = {"slug": device.site.slug, "device_id": device.device_id}
        return queries(admin_client, page.format(**names)), queries(admin_client, fragment.format(**names), **HTMX)

    grow(2, 3)
    small_page, small_fragment = count()
    grow(8, 20)
    assert count() == (small_page, small_fragment)
    assert small_fragment <= small_page

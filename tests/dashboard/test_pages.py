"""Dashboard pages as plain Django views: who may see them, what they show, bad input, query counts."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest
from django.contrib.staticfiles import finders
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from fleet.models import Device, Site
from rollouts.models import Rollout, RolloutDevice
from telemetry.models import Alert
from tests.dashboard.fixtures import open_alert, registry_model, reporting, with_event

pytestmark = pytest.mark.django_db

PAGES = ["/", "/devices/", "/devices/dev-0000/", "/sites/plant-a/", "/alerts/", "/models/"]


@pytest.fixture
def cameras(site: Site, enroll_device: Callable[..., Any]) -> list[Device]:
    return [enroll_device(site, name=f"cam-{i}").device for i in range(2)]


def page(client: Client, path: str, **params: Any) -> tuple[int, str]:
    response = client.get(path, params)
    return response.status_code, response.content.decode()


@pytest.mark.parametrize("path", PAGES)
def test_anonymous_visitors_are_sent_to_the_login_page(client: Client, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 302
    assert response["Location"].startswith("/login/?next=")


def test_a_viewer_who_is_not_staff_signs_in_on_the_dashboards_login_page(client: Client, viewer_user: Any) -> None:
    response = client.post("/login/", {"username": "victor", "password": "pw-victor-123", "next": "/alerts/"})
    assert response.status_code == 302 and response["Location"] == "/alerts/"
    assert client.get("/alerts/").status_code == 200


def test_a_wrong_password_is_refused_with_a_message(client: Client, viewer_user: Any) -> None:
    response = client.post("/login/", {"username": "victor", "password": "nope"})
    assert response.status_code == 200 and 'data-testid="login-error"' in response.content.decode()


# --- overview ----------------------------------------------------------------------------------


def test_the_overview_shows_tiles_and_one_row_per_site_with_its_counts_and_versions(
    viewer_client: Client, cameras: list[Device], other_site: Site
) -> None:
    open_alert(cameras[1])  # the hot camera is online
    reporting(cameras[0], model_version="1.2.0")
    status, body = page(viewer_client, "/")
    assert status == 200
    assert 'data-testid="online-count">1<' in body and 'data-testid="device-count">2<' in body
    opened = Alert.objects.filter(state="open").count()
    assert opened >= 1 and f'data-testid="open-alerts">{opened}<' in body and 'data-testid="site-count">2<' in body
    plant_a = row(body, "plant-a")
    assert 'data-testid="devices">2<' in plant_a and 'data-testid="online">1<' in plant_a
    assert 'class="badge offline">1<' in plant_a and 'detector <span class="mono">1.2.0</span>' in plant_a
    assert f">{opened}</a>" in plant_a and 'href="/sites/plant-a/"' in plant_a
    assert 'data-testid="devices">0<' in row(body, "plant-b")
    # Sites, not devices: no device row and no chart per site.
    assert "data-device=" not in body and "data-series" not in body


def row(body: str, slug: str) -> str:
    """The overview's table row of one site."""
    found = re.search(rf'<tr data-site="{slug}">(.*?)</tr>', body, re.S)
    assert found, f"no row for {slug}"
    return found.group(1)


@pytest.mark.parametrize("path", ["/", "/devices/{device_id}/", "/sites/plant-a/", "/devices/"])
def test_pages_name_no_other_host(viewer_client: Client, cameras: list[Device], path: str) -> None:
    body = page(viewer_client, path.format(device_id=cameras[0].device_id))[1]
    # Every script, style sheet and image comes from this server: nothing names another host (a CDN).
    sources = re.findall(r'(?:src|href)="([^"]*)"', body)
    assert sources and all(not re.match(r"^(?:[a-z]+:)?//", url) for url in sources), sources


def test_the_device_page_loads_chart_js_from_the_installed_package(
    viewer_client: Client, cameras: list[Device]
) -> None:
    assert "/static/vendor/chart.js/chart.umd.min.js" in page(viewer_client, f"/devices/{cameras[0].device_id}/")[1]
    # node_modules/ comes from `npm ci` (make install); without it the charts have nothing to run.
    assert finders.find("vendor/chart.js/chart.umd.min.js"), "run `make install` (npm ci) first"
    assert finders.find("js/charts.js") and finders.find("css/dashboard.css")


def test_an_empty_fleet_has_an_overview_that_says_so(viewer_client: Client) -> None:
    status, body = page(viewer_client, "/")
    assert status == 200 and "No sites yet." in body and 'data-testid="site-count">0<' in body


def test_the_overview_filters_sites_by_name_version_alerts_and_offline_devices(
    viewer_client: Client, cameras: list[Device], other_site: Site, enroll_device: Callable[..., Any]
) -> None:
    reporting(cameras[0], model_version="1.2.0")
    hot = enroll_device(other_site, name="hot").device
    reporting(hot, model_version="1.3.0")
    open_alert(hot)
    Device.objects.filter(pk=hot.pk).update(online=True)
    Device.objects.filter(site=other_site).exclude(pk=hot.pk).update(online=True)

    def shown(**params: Any) -> set[str]:
        status, body = page(viewer_client, "/", **params)
        assert status == 200
        return set(re.findall(r'<tr data-site="([^"]+)">', body))

    assert shown() == {"plant-a", "plant-b"}
    assert shown(q="Plant B") == {"plant-b"} and shown(q="plant-a") == {"plant-a"}
    assert shown(version="detector@1.2.0") == {"plant-a"}
    assert shown(alerts="on") == {"plant-b"}
    assert shown(offline="on") == {"plant-a"}


def test_the_overview_sorts_by_a_column_either_way(
    viewer_client: Client, site: Site, other_site: Site, enroll_device: Callable[..., Any]
) -> None:
    for i in range(3):
        enroll_device(other_site, name=f"b-{i}")
    enroll_device(site, name="a-0")

    def order(sort: str) -> list[str]:
        return re.findall(r'<tr data-site="([^"]+)">', page(viewer_client, "/", sort=sort)[1])

    assert order("devices") == ["plant-a", "plant-b"] and order("-devices") == ["plant-b", "plant-a"]
    assert order("-site") == ["plant-b", "plant-a"]


def test_the_overview_is_paginated_fifty_sites_a_page(viewer_client: Client) -> None:
    Site.objects.bulk_create([Site(slug=f"s-{i:03d}", name=f"S {i:03d}") for i in range(60)])
    first, second = page(viewer_client, "/")[1], page(viewer_client, "/", page=2)[1]
    assert first.count("<tr data-site=") == 50 and second.count("<tr data-site=") == 10
    assert 'href="?page=2"' in first and "51\N{EN DASH}60 of 60" in second


@pytest.mark.parametrize(
    "params", [{"sort": "colour"}, {"page": "zero"}, {"page": "0"}, {"version": "nothing@9"}, {"q": "x" * 300}]
)
def test_bad_overview_input_is_refused_with_a_reason(viewer_client: Client, site: Site, params: Any) -> None:
    status, body = page(viewer_client, "/", **params)
    assert status == 400 and 'data-testid="filter-error"' in body and "<tr data-site=" not in body


def test_the_device_search_lists_matching_devices_with_their_open_alerts(
    viewer_client: Client, cameras: list[Device]
) -> None:
    open_alert(cameras[1])
    status, body = page(viewer_client, "/devices/", q=cameras[1].name)
    assert status == 200
    assert f'data-device="{cameras[1].device_id}"' in body and f'data-device="{cameras[0].device_id}"' not in body
    assert 'class="badge offline">temperature_high<' in body
    assert f'href="/devices/{cameras[1].device_id}/"' in body and 'href="/sites/plant-a/"' in body


def test_a_bad_device_filter_says_why(viewer_client: Client, cameras: list[Device]) -> None:
    status, body = page(viewer_client, "/devices/", online="perhaps")
    assert status == 400 and 'data-testid="filter-error"' in body and "data-device=" not in body


def test_the_device_list_is_paginated_a_hundred_a_page(viewer_client: Client, site: Site) -> None:
    Device.objects.bulk_create([Device(site=site, name=f"cam-{i:03d}", device_id=f"d-{i:03d}") for i in range(105)])
    assert page(viewer_client, "/devices/")[1].count("<tr data-device=") == 100
    assert page(viewer_client, "/devices/", page=2)[1].count("<tr data-device=") == 5


def a_fleet(sites: int, devices: int) -> None:
    """``sites`` sites of ``devices`` devices each, half online, two versions, a running rollout and open alerts."""
    version = registry_model(f"fleet-{sites}").versions.get()
    made = Site.objects.bulk_create([Site(slug=f"f{sites}-{i}", name=f"Fleet {sites} site {i}") for i in range(sites)])
    rows = Device.objects.bulk_create(
        [
            Device(
                site=s,
                name=f"cam-{s.pk}-{j}",
                device_id=f"dev-{s.pk}-{j}",
                online=j % 2 == 0,
                reported={"model_name": "detector", "model_version": f"1.{j % 2}.0", "phase": "active"},
            )
            for s in made
            for j in range(devices)
        ]
    )
    rollout = Rollout.objects.create(version=version, target={}, plan={}, state=Rollout.RUNNING)
    RolloutDevice.objects.bulk_create(
        [RolloutDevice(rollout=rollout, device=d, stage_index=0, target="cpu-fp32") for d in rows[::3]]
    )
    for device in rows[:: max(1, len(rows) // 3)]:
        open_alert(device)


@pytest.mark.parametrize("path", ["/", "/?alerts=on&sort=-alerts", "/devices/", "/sites/{slug}/"])
def test_the_page_query_count_does_not_grow_with_the_fleet(admin_client: Client, path: str) -> None:
    def count() -> int:
        url = path.format(slug=Site.objects.order_by("-pk").values_list("slug", flat=True)[0])
        with CaptureQueriesContext(connection) as queries:
            response = admin_client.get(url)
            assert response.status_code == 200
        assert response.content.count(b"<tr data-") > 1
        return len(queries)

    a_fleet(3, 4)
    small = count()
    a_fleet(12, 20)
    assert count() == small


# --- device page ---------------------------------------------------------------------------


def test_a_device_page_shows_reported_state_heartbeat_events_and_open_alerts(
    viewer_client: Client, cameras: list[Device]
) -> None:
    device = reporting(cameras[0], phase="failed", error="reference outputs differ")
    with_event(device, "validation.failed", version="1.1.0")
    open_alert(device)
    status, body = page(viewer_client, f"/devices/{device.device_id}/")
    assert status == 200
    assert "phase-failed" in body and "reference outputs differ" in body
    assert 'data-testid="heartbeat"' in body and "temperature_c" in body
    assert "validation.failed" in body and "version=1.1.0" in body
    assert body.count('data-testid="device-alert"') == 1
    for chart in ("latency", "frames", "confidence", "confidence-histogram", "escalation", "health"):
        assert f'data-chart="{chart}"' in body


def test_a_device_page_asks_the_series_api_for_the_chosen_range(viewer_client: Client, cameras: list[Device]) -> None:
    status, body = page(viewer_client, f"/devices/{cameras[0].device_id}/", range="7d")
    assert status == 200 and 'data-points="168"' in body
    assert 'data-testid="range-7d" aria-current="true"' in body


def test_an_unknown_range_is_refused_with_the_ranges_offered(viewer_client: Client, cameras: list[Device]) -> None:
    status, body = page(viewer_client, f"/devices/{cameras[0].device_id}/", range="1y")
    assert status == 400
    assert 'data-testid="range-error"' in body and "1h, 24h, 7d" in body


def test_an_unknown_device_is_404(viewer_client: Client, site: Site) -> None:
    assert viewer_client.get("/devices/dev-nope/").status_code == 404


def test_the_device_page_query_count_does_not_grow_with_events_and_alerts(
    viewer_client: Client, cameras: list[Device]
) -> None:
    device = cameras[0]

    def count() -> int:
        with CaptureQueriesContext(connection) as queries:
            assert viewer_client.get(f"/devices/{device.device_id}/").status_code == 200
        return len(queries)

    with_event(device)
    few = count()
    for i in range(10):
        with_event(device, kind=f"kind-{i}")
    open_alert(device)
    assert count() == few


# --- alerts --------------------------------------------------------------------------------


def test_staff_see_an_acknowledge_button_on_open_alerts(admin_client: Client, cameras: list[Device]) -> None:
    alert = open_alert(cameras[0])
    status, body = page(admin_client, "/alerts/")
    assert status == 200 and f'data-testid="ack-{alert.pk}"' in body
    assert f'data-acknowledge="/api/v1/alerts/{alert.pk}/acknowledge/"' in body


def test_a_viewer_sees_alerts_but_no_acknowledge_button(viewer_client: Client, cameras: list[Device]) -> None:
    alert = open_alert(cameras[0])
    status, body = page(viewer_client, "/alerts/")
    assert status == 200 and f'data-alert="{alert.pk}"' in body
    assert "data-acknowledge" not in body


def test_alerts_filter_by_state_as_the_api_does(admin_client: Client, cameras: list[Device]) -> None:
    alert = open_alert(cameras[0])
    assert f'data-alert="{alert.pk}"' in page(admin_client, "/alerts/", state="open")[1]
    assert f'data-alert="{alert.pk}"' not in page(admin_client, "/alerts/", state="resolved")[1]


def test_a_bad_alert_filter_says_why(admin_client: Client, cameras: list[Device]) -> None:
    open_alert(cameras[0])
    status, body = page(admin_client, "/alerts/", state="sleeping")
    assert status == 400 and 'data-testid="filter-error"' in body and "data-alert=" not in body


def test_the_alerts_page_query_count_does_not_grow_with_alerts(
    admin_client: Client, site: Site, enroll_device: Callable[..., Any]
) -> None:
    first = open_alert(enroll_device(site, name="hot-0").device)

    def count() -> int:
        with CaptureQueriesContext(connection) as queries:
            assert admin_client.get("/alerts/").status_code == 200
        return len(queries)

    few = count()
    for i in range(6):
        device = enroll_device(site, name=f"hot-{i + 1}").device
        Alert.objects.create(rule=first.rule, device=device, since=first.since, state="open")
    assert count() == few


# --- models --------------------------------------------------------------------------------


def test_the_models_page_lists_versions_aliases_and_int8_figures_per_bundle(viewer_client: Client) -> None:
    registry_model("detector", versions=2)
    status, body = page(viewer_client, "/models/")
    assert status == 200
    assert 'data-model="detector"' in body and "production → 1.1.0" in body
    assert 'data-bundle="detector@1.0.0/cpu-int8"' in body and 'data-bundle="detector@1.1.0/cpu-fp32"' in body
    assert "0.62\N{MULTIPLICATION SIGN}" in body and "94 % <span" in body and "1.2\xa0MB" in body


def test_a_bad_models_filter_says_why(viewer_client: Client) -> None:
    registry_model()
    status, body = page(viewer_client, "/models/", task="painting")
    assert status == 400 and 'data-testid="filter-error"' in body and "data-model=" not in body


def test_the_models_page_query_count_does_not_grow_with_the_registry(viewer_client: Client) -> None:
    registry_model("first")

    def count() -> int:
        with CaptureQueriesContext(connection) as queries:
            assert viewer_client.get("/models/").status_code == 200
        return len(queries)

    few = count()
    registry_model("second", versions=3)
    registry_model("third", versions=2)
    assert count() == few

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
from telemetry.models import Alert
from tests.dashboard.fixtures import open_alert, registry_model, reporting, with_event

pytestmark = pytest.mark.django_db

PAGES = ["/", "/devices/dev-0000/", "/alerts/", "/models/"]


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


def test_the_overview_shows_tiles_reported_versions_and_a_chart_per_site(
    viewer_client: Client, cameras: list[Device], other_site: Site
) -> None:
    open_alert(cameras[1])  # the hot camera is online
    reporting(cameras[0], model_version="1.2.0", phase="downloading", fallback=True)
    status, body = page(viewer_client, "/")
    assert status == 200
    assert 'data-testid="online-count">1<' in body and 'data-testid="device-count">2<' in body
    opened = Alert.objects.filter(state="open").count()
    assert opened >= 1 and f'data-testid="open-alerts">{opened}<' in body and 'data-testid="site-count">2<' in body
    assert "1.2.0" in body and "phase-downloading" in body and "badge fallback" in body
    assert 'data-testid="site-chart-plant-a"' in body and 'data-testid="site-chart-plant-b"' in body


def test_the_overview_loads_chart_js_from_the_installed_package_not_a_cdn(viewer_client: Client, site: Site) -> None:
    body = page(viewer_client, "/")[1]
    assert "/static/vendor/chart.js/chart.umd.min.js" in body
    # Every script, style sheet and image comes from this server: nothing names another host (a CDN).
    sources = re.findall(r'(?:src|href)="([^"]*)"', body)
    assert sources and all(not re.match(r"^(?:[a-z]+:)?//", url) for url in sources), sources
    # node_modules/ comes from `npm ci` (make install); without it the charts have nothing to run.
    assert finders.find("vendor/chart.js/chart.umd.min.js"), "run `make install` (npm ci) first"
    assert finders.find("js/charts.js") and finders.find("css/dashboard.css")


def test_the_overview_filter_is_the_apis_filter(viewer_client: Client, cameras: list[Device]) -> None:
    body = page(viewer_client, "/", q=cameras[1].name)[1]
    assert f'data-device="{cameras[1].device_id}"' in body and f'data-device="{cameras[0].device_id}"' not in body


def test_each_device_row_links_to_its_device_page(viewer_client: Client, cameras: list[Device]) -> None:
    body = page(viewer_client, "/")[1]
    assert f'href="/devices/{cameras[0].device_id}/"' in body


def test_the_overview_query_count_does_not_grow_with_devices(
    viewer_client: Client, site: Site, other_site: Site, enroll_device: Callable[..., Any]
) -> None:
    def count() -> int:
        with CaptureQueriesContext(connection) as queries:
            assert viewer_client.get("/").status_code == 200
        return len(queries)

    enroll_device(site, name="first")
    few = count()
    for i in range(8):
        enroll_device(other_site if i % 2 else site, name=f"more-{i}")
    assert count() == few


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

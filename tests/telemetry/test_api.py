"""The telemetry series and alerts endpoints: what a chart gets, who may see and acknowledge, and query counts."""

from __future__ import annotations

import random
from base64 import b64encode
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from rest_framework.test import APIClient

from fleet.models import Device, Site
from telemetry import alerts
from telemetry.models import Alert, Resolution, Scope, WindowRollup
from tests.telemetry.factories import Feed, roll_up_everything
from tests.telemetry.helpers import alive

pytestmark = pytest.mark.django_db

START = datetime(2026, 11, 20, 8, 0, tzinfo=timezone.utc)


@pytest.fixture
def devices(site: Site, enroll_device: Callable[..., Any]) -> list[Device]:
    devices = [enroll_device(site, name=f"cam-{i}").device for i in range(3)]
    rng = random.Random(0)
    for device in devices:
        feed = Feed(device)
        feed.store([*feed.windows(START, minutes=30, rng=rng, per_minute=2), feed.heartbeat(START, temperature_c=61.0)])
    roll_up_everything()
    return devices


def series(client: APIClient, **params: Any) -> Any:
    return client.get("/api/v1/telemetry/", params)


def test_a_site_series_merges_every_device_and_reads_percentiles_off_the_merged_histogram(
    viewer_client: APIClient, devices: list[Device]
) -> None:
    answer = series(
        viewer_client,
        scope="site",
        key="plant-a",
        start=START.isoformat(),
        end=(START + timedelta(hours=1)).isoformat(),
    )
    assert answer.status_code == 200, answer.content
    body = answer.json()
    assert body["resolution"] == "1m" and body["model_versions"] == ["detector@1.0.0"]
    assert sum(p["frames"] for p in body["points"]) == 3 * 30 * 2 * 50
    assert 15 < body["summary"]["latency_p50_ms"] < 25 < body["summary"]["latency_p95_ms"]
    assert sum(body["summary"]["confidence_distribution"]) == pytest.approx(1.0)
    assert set(body["summary"]["class_mix"]) == {"ok", "defect"}


def test_the_server_downsamples_to_at_most_the_points_asked_for(
    viewer_client: APIClient, devices: list[Device]
) -> None:
    body = series(
        viewer_client,
        scope="device",
        key=devices[0].device_id,
        start=START.isoformat(),
        end=(START + timedelta(minutes=31)).isoformat(),
        points=4,
    ).json()
    assert body["step_s"] == 480 and len(body["points"]) == 4
    assert sum(p["windows"] for p in body["points"]) == 60
    assert body["health"][0]["temperature_c_max"] == 61.0


def test_each_step_carries_its_own_confidence_distribution(viewer_client: APIClient, devices: list[Device]) -> None:
    body = series(
        viewer_client,
        scope="device",
        key=devices[0].device_id,
        start=START.isoformat(),
        end=(START + timedelta(minutes=30)).isoformat(),
        points=3,
    ).json()
    steps = [p["confidence_distribution"] for p in body["points"]]
    assert len(steps) == 3 and all(len(d) == len(body["summary"]["confidence_distribution"]) for d in steps)
    assert all(sum(d) == pytest.approx(1.0) for d in steps)
    # One step over the whole range is the range's distribution, bin by bin.
    whole = series(
        viewer_client,
        scope="device",
        key=devices[0].device_id,
        start=START.isoformat(),
        end=(START + timedelta(minutes=30)).isoformat(),
        points=1,
    ).json()
    assert whole["points"][0]["confidence_distribution"] == pytest.approx(whole["summary"]["confidence_distribution"])


def test_a_week_is_read_from_hour_rollups(viewer_client: APIClient, devices: list[Device]) -> None:
    body = series(
        viewer_client,
        scope="model",
        key="detector@1.0.0",
        start=(START - timedelta(days=6)).isoformat(),
        end=(START + timedelta(days=1)).isoformat(),
    ).json()
    assert body["resolution"] == "1h" and body["step_s"] == 3600
    assert body["summary"]["frames"] == 3 * 30 * 2 * 50


@pytest.mark.parametrize(
    ("params", "field", "message"),
    [
        (
            {"scope": "site", "key": "plant-a", "start": "2026-11-20T10:00:00Z", "end": "2026-11-20T09:00:00Z"},
            "end",
            "after",
        ),
        (
            {"scope": "site", "key": "plant-a", "start": "2026-11-01T00:00:00Z", "resolution": "1m"},
            "resolution",
            "minute",
        ),
        ({"scope": "model", "key": "detector", "start": "2026-11-20T00:00:00Z"}, "key", "name@version"),
        ({"scope": "galaxy", "key": "x", "start": "2026-11-20T00:00:00Z"}, "scope", "galaxy"),
        ({"scope": "site", "key": "plant-a", "start": "yesterday"}, "start", "format"),
        ({"scope": "site", "key": "plant-a", "start": "2026-11-20T00:00:00Z", "points": 5000}, "points", "1000"),
    ],
)
def test_bad_series_requests_get_a_clear_400_naming_the_parameter(
    viewer_client: APIClient, site: Site, params: dict[str, Any], field: str, message: str
) -> None:
    answer = series(viewer_client, **params)
    assert answer.status_code == 400 and answer.json()["code"] == "invalid"
    assert list(answer.json()["fields"]) == [field] and message in answer.json()["fields"][field][0]


def test_an_unknown_device_or_site_is_404(viewer_client: APIClient, site: Site) -> None:
    assert series(viewer_client, scope="device", key="dev-nope", start="2026-11-20T00:00:00Z").status_code == 404
    assert series(viewer_client, scope="site", key="nowhere", start="2026-11-20T00:00:00Z").status_code == 404


def test_the_series_query_count_does_not_grow_with_devices_or_points(
    viewer_client: APIClient, site: Site, enroll_device: Callable[..., Any]
) -> None:
    def count(n_devices: int) -> int:
        for i in range(n_devices):
            device = enroll_device(site, name=f"extra-{n_devices}-{i}").device
            for hour in range(48):
                WindowRollup.objects.create(
                    resolution=Resolution.HOUR,
                    scope=Scope.DEVICE,
                    key=device.device_id,
                    bucket=START - timedelta(hours=hour),
                    frames=10,
                )
        with CaptureQueriesContext(connection) as queries:
            assert (
                series(
                    viewer_client,
                    scope="site",
                    key="plant-a",
                    start=(START - timedelta(days=7)).isoformat(),
                    end=START.isoformat(),
                ).status_code
                == 200
            )
        return len(queries)

    assert count(2) == count(20) <= 6


def test_anonymous_and_device_callers_get_no_telemetry(anonymous: APIClient, site: Site) -> None:
    assert series(anonymous, scope="site", key="plant-a", start="2026-11-20T00:00:00Z").status_code in (401, 403)


# --- alerts --------------------------------------------------------------------


@pytest.fixture
def alert(site: Site, enroll_device: Callable[..., Any]) -> Alert:
    device = enroll_device(site, name="hot").device
    now = datetime.now(timezone.utc)
    alerts.ensure_rules()
    alive(device, now, temperature_c=99.0)
    alerts.evaluate(now)
    later = now + timedelta(minutes=6)  # past the rule's five minutes
    alive(device, later, temperature_c=99.0)
    alerts.evaluate(later)
    return Alert.objects.get(rule__kind="temperature_high")


def test_anyone_signed_in_lists_alerts_with_filters(viewer_client: APIClient, alert: Alert, other_site: Site) -> None:
    body = viewer_client.get("/api/v1/alerts/", {"state": "open", "site": "plant-a"}).json()
    assert [a["id"] for a in body["results"]] == [alert.pk]
    assert body["results"][0]["rule"] == "temperature_high" and body["results"][0]["value"] == 99.0
    assert viewer_client.get("/api/v1/alerts/", {"site": "plant-b"}).json()["results"] == []
    assert viewer_client.get("/api/v1/alerts/", {"live": "false"}).json()["results"] == []


def test_the_alert_list_query_count_is_bounded(
    viewer_client: APIClient, alert: Alert, enroll_device: Callable[..., Any], site: Site
) -> None:
    with CaptureQueriesContext(connection) as one:
        viewer_client.get("/api/v1/alerts/")
    for i in range(5):
        device = enroll_device(site, name=f"more-{i}").device
        Alert.objects.create(rule=alert.rule, device=device, since=alert.since, state="open")
    with CaptureQueriesContext(connection) as six:
        assert len(viewer_client.get("/api/v1/alerts/").json()["results"]) == 6
    assert len(one) == len(six)


@pytest.mark.parametrize(
    ("who", "expected"),
    [("admin", 200), ("viewer", 403), ("read_token", 403), ("fleet_token", 200), ("anonymous", 401)],
)
def test_only_staff_or_a_fleet_token_may_acknowledge(
    who: str,
    expected: int,
    alert: Alert,
    admin_client: APIClient,
    viewer_client: APIClient,
    anonymous: APIClient,
    token_client: Callable[..., APIClient],
) -> None:
    clients = {
        "admin": lambda: admin_client,
        "viewer": lambda: viewer_client,
        "anonymous": lambda: anonymous,
        "read_token": lambda: token_client("read"),
        "fleet_token": lambda: token_client("fleet"),
    }
    answer = clients[who]().post(f"/api/v1/alerts/{alert.pk}/acknowledge/", {"note": "on it"}, format="json")
    assert answer.status_code in ((401, 403) if expected == 401 else (expected,))
    alert.refresh_from_db()
    assert (alert.state == "acknowledged") == (expected == 200)


def test_acknowledging_twice_is_a_conflict(admin_client: APIClient, alert: Alert) -> None:
    assert admin_client.post(f"/api/v1/alerts/{alert.pk}/acknowledge/").status_code == 200
    answer = admin_client.post(f"/api/v1/alerts/{alert.pk}/acknowledge/")
    assert answer.status_code == 409 and answer.json()["code"] == "alert_not_open"
    assert "acknowledged" in answer.json()["detail"]


def test_the_openapi_schema_describes_telemetry_and_alerts(admin_client: APIClient) -> None:
    schema = admin_client.get("/api/v1/schema/", {"format": "json"}).json()
    assert "/api/v1/telemetry/" in schema["paths"] and "/api/v1/alerts/{id}/acknowledge/" in schema["paths"]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("2026-01-01T00:00:00+18:45", "offset"),
        ("2026-01-01T00:00:00-14:01", "offset"),
        ("0001-01-01T00:00:00+01:00", "9999"),
        ("9999-12-31T23:30:00-01:00", "9999"),
    ],
)
def test_a_date_time_the_database_cannot_hold_is_a_400_naming_the_parameter(
    viewer_client: APIClient, alert: Alert, value: str, message: str
) -> None:
    answer = viewer_client.get("/api/v1/alerts/", {"since": value})
    assert answer.status_code == 400 and answer.json()["code"] == "invalid"
    assert list(answer.json()["fields"]) == ["since"] and message in answer.json()["fields"]["since"][0]
    answer = series(viewer_client, scope="site", key="plant-a", start=value)
    assert answer.status_code == 400 and answer.json()["code"] == "invalid"
    assert list(answer.json()["fields"]) == ["start"] and message in answer.json()["fields"]["start"][0]


def test_a_date_time_filter_takes_the_widest_real_offsets(viewer_client: APIClient, alert: Alert) -> None:
    for value in ("2000-01-01T00:00:00+14:00", "2000-01-01T00:00:00-12:00"):
        answer = viewer_client.get("/api/v1/alerts/", {"since": value})
        assert answer.status_code == 200 and [a["id"] for a in answer.json()["results"]] == [alert.pk]


# --- GET /api/v1/devices/{id}/events/ -------------------------------------------------------------


@pytest.fixture
def events(site: Site, enroll_device: Callable[..., Any]) -> Device:
    """cam-1 with three events stored as the bridge stores them, and another device with one."""
    from agent.kernel import protocol
    from telemetry.services import record_event

    device = enroll_device(site, name="cam-1").device
    other = enroll_device(site, name="cam-2").device
    for minutes, kind, data in [
        (0, "model_swap", {"version": "1.0.0"}),
        (10, "thermal_throttle", {"temperature_c": 81.5}),
        (20, "desired_rejected", {"reason": "expired"}),
    ]:
        record_event(device, protocol.Event(kind=kind, ts=START + timedelta(minutes=minutes), data=data))
    record_event(other, protocol.Event(kind="model_swap", ts=START))
    return device


def device_events(client: APIClient, device: Device, **params: Any) -> Any:
    return client.get(f"/api/v1/devices/{device.device_id}/events/", params)


def test_a_devices_events_come_newest_first_with_what_the_device_sent(
    token_client: Callable[..., APIClient], events: Device
) -> None:
    answer = device_events(token_client("read"), events)
    assert answer.status_code == 200, answer.content
    body = answer.json()
    assert body["count"] == 3
    assert [e["kind"] for e in body["results"]] == ["desired_rejected", "thermal_throttle", "model_swap"]
    newest = body["results"][0]
    assert newest["device"] == events.device_id and newest["data"] == {"reason": "expired"}
    assert datetime.fromisoformat(newest["at"]) == START + timedelta(minutes=20)


def test_events_filter_by_kind_and_a_half_open_time_window(viewer_client: APIClient, events: Device) -> None:
    by_kind = device_events(viewer_client, events, kind="thermal_throttle").json()["results"]
    assert [e["kind"] for e in by_kind] == ["thermal_throttle"]
    window = device_events(
        viewer_client,
        events,
        since=(START + timedelta(minutes=10)).isoformat(),
        until=(START + timedelta(minutes=20)).isoformat(),
    ).json()["results"]
    assert [e["kind"] for e in window] == ["thermal_throttle"]
    oldest_first = device_events(viewer_client, events, ordering="at", limit=1).json()
    assert oldest_first["count"] == 3 and [e["kind"] for e in oldest_first["results"]] == ["model_swap"]


def test_events_refuse_a_filter_they_cannot_read(viewer_client: APIClient, events: Device) -> None:
    for params, field in [
        ({"since": "yesterday"}, "since"),
        ({"until": "2026-11-20T08:00:00+15:00"}, "until"),
        ({"ordering": "kind"}, "ordering"),
        ({"limit": "0"}, "limit"),
        ({"offset": "-1"}, "offset"),
    ]:
        answer = device_events(viewer_client, events, **params)
        assert answer.status_code == 400, (params, answer.content)
        assert answer.json()["code"] == "invalid" and list(answer.json()["fields"]) == [field]


def test_events_of_an_unknown_device_are_not_found(viewer_client: APIClient, events: Device) -> None:
    answer = viewer_client.get("/api/v1/devices/dev-nope/events/")
    assert answer.status_code == 404 and answer.json()["code"] == "not_found"


def test_events_are_for_operators_not_devices(
    anonymous: APIClient, site: Site, enroll_device: Callable[..., Any], events: Device
) -> None:
    assert device_events(anonymous, events).status_code == 401
    device = enroll_device(site, name="cam-3")
    as_device = APIClient()
    as_device.credentials(
        HTTP_AUTHORIZATION="Basic " + b64encode(f"{device.device.device_id}:{device.secret}".encode()).decode()
    )
    assert as_device.get("/api/v1/device/self").status_code == 200
    assert device_events(as_device, events).status_code == 403

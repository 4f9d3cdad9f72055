"""A site's maintenance window holds its installs until it opens; a download cap keeps a site's uplink from flooding."""

from __future__ import annotations

from datetime import datetime, time, timedelta, timezone
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from core.models import AuditLog
from fleet import services as fleet
from fleet.models import Device, Site
from rollouts import scheduler, services
from rollouts.models import Rollout, RolloutDevice, RolloutStage
from tests.rollouts.conftest import alive, report, sent_to
from tests.rollouts.helpers import GATES, drive, start_rollout

EVERYONE = {"stages": [{"kind": "percent", "value": 100}]}
NOON = datetime(2026, 12, 7, 12, 0, tzinfo=timezone.utc)


def window(site: Site, start: str, end: str, zone: str = "UTC") -> None:
    site.timezone = zone
    site.maintenance_window_start, site.maintenance_window_end = time.fromisoformat(start), time.fromisoformat(end)
    site.full_clean()
    site.save()


def tick(at: datetime) -> None:
    alive(Device.objects.all(), at)
    scheduler.tick(now=at)


def states_by_site(rollout: Rollout) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for entry in RolloutDevice.objects.filter(rollout=rollout).select_related("device__site"):
        out.setdefault(entry.device.site.slug, set()).add(entry.state)
    return out


def activate_sent(rollout: Rollout, version: Any) -> None:
    for entry in sent_to(rollout.pk, RolloutDevice.ASSIGNED):
        report(entry.device, version)


@pytest.mark.parametrize(
    ("start", "end", "at", "open_"),
    [
        ("01:00", "05:00", "00:59", False),
        ("01:00", "05:00", "01:00", True),
        ("01:00", "05:00", "04:59", True),
        ("01:00", "05:00", "05:00", False),
        ("22:00", "04:00", "21:59", False),
        ("22:00", "04:00", "22:00", True),
        ("22:00", "04:00", "00:30", True),
        ("22:00", "04:00", "03:59", True),
        ("22:00", "04:00", "04:00", False),
        ("22:00", "04:00", "12:00", False),
    ],
)
def test_a_window_is_open_from_its_start_up_to_its_end_and_may_cross_midnight(
    start: str, end: str, at: str, open_: bool
) -> None:
    site = Site(
        slug="s", maintenance_window_start=time.fromisoformat(start), maintenance_window_end=time.fromisoformat(end)
    )
    hour, minute = map(int, at.split(":"))
    assert site.window_open(NOON.replace(hour=hour, minute=minute)) is open_


def test_a_site_without_a_window_is_always_open() -> None:
    assert Site(slug="s").window_open(NOON)


def test_a_window_is_in_the_sites_local_time() -> None:
    tokyo = Site(
        slug="s", timezone="Asia/Tokyo", maintenance_window_start=time(2), maintenance_window_end=time(5)
    )  # 17:00 to 20:00 UTC
    assert tokyo.window_open(NOON.replace(hour=18))
    assert not tokyo.window_open(NOON.replace(hour=3))


@pytest.mark.django_db
def test_a_closed_window_holds_its_sites_devices_while_another_site_is_sent_until_it_opens(
    versions, fleet_on_v1, site, other_site
):
    _, v2 = versions
    window(site, "22:00", "04:00")  # plant-a: closed at noon, open overnight
    before = {d.pk: (d.desired_generation, d.desired_document) for d in Device.objects.filter(site=site)}
    rollout = start_rollout(v2, plan=EVERYONE)

    tick(NOON)

    assert states_by_site(rollout) == {"plant-a": {RolloutDevice.PENDING}, "plant-b": {RolloutDevice.ASSIGNED}}
    assert {d.pk: (d.desired_generation, d.desired_document) for d in Device.objects.filter(site=site)} == before
    stage = rollout.stages.get(index=0)
    assert stage.state == RolloutStage.INSTALLING
    start = AuditLog.objects.get(action="rollout.stage_start")
    assert (start.data["devices"], start.data["held"]) == (4, 6)

    # plant-b is all active, but the stage is not judged while plant-a waits for its window.
    activate_sent(rollout, v2)
    tick(NOON + timedelta(minutes=2))
    tick(NOON + timedelta(hours=9, minutes=59))  # 21:59, still closed
    stage.refresh_from_db()
    assert stage.state == RolloutStage.INSTALLING
    assert states_by_site(rollout) == {"plant-a": {RolloutDevice.PENDING}, "plant-b": {RolloutDevice.ACTIVE}}

    opened = NOON + timedelta(hours=10)  # 22:00: the window opens
    tick(opened)
    assert states_by_site(rollout) == {"plant-a": {RolloutDevice.ASSIGNED}, "plant-b": {RolloutDevice.ACTIVE}}
    assert all(d.desired["model"]["version"] == "2.0.0" for d in Device.objects.filter(site=site))
    assert {e.sent_at for e in sent_to(rollout.pk, RolloutDevice.ASSIGNED)} == {opened}

    # Ten hours after the stage started, but two minutes after they were sent: not silent.
    tick(opened + timedelta(minutes=2))
    assert states_by_site(rollout)["plant-a"] == {RolloutDevice.ASSIGNED}
    activate_sent(rollout, v2)
    tick(opened + timedelta(minutes=4))
    stage.refresh_from_db()
    assert stage.state == RolloutStage.SOAKING
    assert {e.state for e in sent_to(rollout.pk)} == {RolloutDevice.ACTIVE}


@pytest.mark.django_db
def test_a_window_across_midnight_sends_after_midnight_too(versions, fleet_on_v1, site, other_site):
    _, v2 = versions
    window(site, "22:00", "04:00")
    window(other_site, "22:00", "04:00")
    rollout = start_rollout(v2, plan=EVERYONE)

    tick(NOON.replace(hour=4))  # the end: closed
    assert states_by_site(rollout) == {"plant-a": {RolloutDevice.PENDING}, "plant-b": {RolloutDevice.PENDING}}
    assert rollout.stages.get(index=0).state == RolloutStage.PENDING  # nothing sent: the stage has not begun

    tick(NOON.replace(hour=3, minute=30) + timedelta(days=1))
    assert states_by_site(rollout) == {"plant-a": {RolloutDevice.ASSIGNED}, "plant-b": {RolloutDevice.ASSIGNED}}


@pytest.mark.django_db
def test_each_sites_window_is_read_in_its_own_time_zone(versions, fleet_on_v1, site, other_site):
    _, v2 = versions
    window(site, "02:00", "05:00", "Asia/Tokyo")  # 17:00 to 20:00 UTC
    window(other_site, "02:00", "05:00", "UTC")
    rollout = start_rollout(v2, plan=EVERYONE)

    tick(NOON.replace(hour=18))

    assert states_by_site(rollout) == {"plant-a": {RolloutDevice.ASSIGNED}, "plant-b": {RolloutDevice.PENDING}}


@pytest.mark.django_db
def test_a_cap_of_two_downloads_per_site_sends_six_devices_two_at_a_time_and_all_end_active(
    versions, fleet_on_v1, site
):
    v1, v2 = versions
    rollout = start_rollout(v2, plan=EVERYONE, gates={"max_concurrent_downloads_per_site": 2})
    most: dict[str, int] = {}

    def tick_and_count(at: datetime) -> None:
        scheduler.tick(now=at)
        for slug, states in states_by_site_counts(rollout).items():
            most[slug] = max(most.get(slug, 0), states.get(RolloutDevice.ASSIGNED, 0))

    drive(rollout, v1, v2, ticker=tick_and_count)

    rollout.refresh_from_db()
    assert rollout.state == Rollout.COMPLETED, rollout.halt_reason
    assert most == {"plant-a": 2, "plant-b": 2}  # six devices at plant-a, four at plant-b
    assert {e.state for e in sent_to(rollout.pk)} == {RolloutDevice.ACTIVE}
    assert AuditLog.objects.filter(action="rollout.stage_send").count() == 2  # plant-a's third pair came last


def states_by_site_counts(rollout: Rollout) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for entry in RolloutDevice.objects.filter(rollout=rollout).select_related("device__site"):
        counts = out.setdefault(entry.device.site.slug, {})
        counts[entry.state] = counts.get(entry.state, 0) + 1
    return out


@pytest.mark.django_db
def test_a_cap_out_of_bounds_is_refused(versions, fleet_on_v1):
    _, v2 = versions
    for value in (-1, 10_001, 1.5, True):
        with pytest.raises(Exception, match="max_concurrent_downloads_per_site"):
            start_rollout(v2, gates={"max_concurrent_downloads_per_site": value})


@pytest.mark.django_db
def test_the_sites_api_sets_a_time_zone_and_a_window_and_clears_it(admin_client, site):
    url = f"/api/v1/sites/{site.slug}/"
    body = {"timezone": "Asia/Tokyo", "maintenance_window": {"start": "22:00", "end": "04:00"}}

    response = admin_client.patch(url, body, format="json")

    assert response.status_code == 200, response.content
    assert {k: response.json()[k] for k in body} == body
    site.refresh_from_db()
    assert (site.maintenance_window_start, site.maintenance_window_end) == (time(22), time(4))
    assert (
        admin_client.patch(url, {"name": "Plant A"}, format="json").json()["maintenance_window"]
        == body["maintenance_window"]
    )
    cleared = admin_client.patch(url, {"maintenance_window": None}, format="json")
    assert cleared.status_code == 200 and cleared.json()["maintenance_window"] is None
    created = admin_client.post("/api/v1/sites/", {"slug": "depot-9", "name": "Depot 9"}, format="json").json()
    assert (created["timezone"], created["maintenance_window"]) == ("UTC", None)


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"timezone": "Mars/Olympus_Mons"}, "timezone"),
        ({"timezone": "localtime"}, "timezone"),
        ({"timezone": "utc"}, "timezone"),
        ({"maintenance_window": {"start": "25:00", "end": "04:00"}}, "maintenance_window"),
        ({"maintenance_window": {"start": "22:00", "end": "22:00"}}, "maintenance_window"),
        ({"maintenance_window": {"start": "22:00"}}, "maintenance_window"),
        ({"maintenance_window": {"start": "22:00", "end": "4:00"}}, "maintenance_window"),
        ({"maintenance_window": {"start": "22:00", "end": "04:00\n"}}, "maintenance_window"),
        ({"maintenance_window": {"start": "22:00", "end": "04:00", "days": "mon"}}, "maintenance_window"),
        ({"maintenance_window": "22:00-04:00"}, "maintenance_window"),
    ],
)
def test_the_sites_api_refuses_a_bad_time_zone_or_window_naming_the_field(admin_client, site, body, field):
    response = admin_client.patch(f"/api/v1/sites/{site.slug}/", body, format="json")

    assert response.status_code == 400
    assert response.json()["code"] == "invalid" and list(response.json()["fields"]) == [field]
    site.refresh_from_db()
    assert (site.timezone, site.maintenance_window_start) == ("UTC", None)


@pytest.mark.django_db
def test_sending_held_devices_takes_as_many_queries_for_twenty_devices_as_for_four(
    versions, fleet_on_v1, site, other_site, enroll_device
):
    v1, v2 = versions
    for i in range(14):  # plant-a: 20 devices, plant-b: 4
        device = enroll_device(site, name=f"extra-{i}", agent_version="0.1.0").device
        fleet.assign_model(device, v1, actor="test")
        report(device, v1)
    gates = {**GATES, "max_concurrent_downloads_per_site": 3}
    big, small = (
        services.create(version=v2, target={"sites": [s.slug]}, plan=EVERYONE, gates=gates, actor="ci")
        for s in (site, other_site)
    )
    counts: dict[int, list[int]] = {big.pk: [], small.pk: []}
    for at in (NOON, NOON + timedelta(minutes=2)):  # send three, then (three active) send three more
        for rollout in (big, small):
            rollout.refresh_from_db()
            with CaptureQueriesContext(connection) as queries:
                scheduler.step(rollout, at)
            counts[rollout.pk].append(len(queries))
            activate_sent(rollout, v2)

    assert counts[big.pk] == counts[small.pk]
    assert [len(sent_to(r.pk, RolloutDevice.ACTIVE)) for r in (big, small)] == [3, 3]
    assert [len(sent_to(r.pk, RolloutDevice.ASSIGNED)) for r in (big, small)] == [3, 1]

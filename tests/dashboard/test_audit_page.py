"""The audit log page: what each row says, the filters, paging by key, who sees which entries, query counts."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from core.models import AuditLog
from dashboard.audit import PER_PAGE, show
from fleet.access import set_role
from fleet.models import Device, Site
from registry.models import ModelVersion
from rollouts.models import Rollout
from tests.dashboard.fixtures import registry_model

pytestmark = pytest.mark.django_db

URL = "/audit/"


def entries(body: str) -> list[int]:
    return [int(pk) for pk in re.findall(r'data-entry="(\d+)"', body)]


def get(client: Client, **params: Any) -> tuple[int, str]:
    response = client.get(URL, params)
    return response.status_code, response.content.decode()


def operator_of(*sites: Site, name: str = "olga") -> Any:
    user = get_user_model().objects.create_user(name, password=f"pw-{name}-123")
    set_role(actor=None, user=user, kind="operator", sites=sites)
    return user


def signed_in(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def camera(site: Site, enroll_device: Callable[..., Any]) -> Device:
    return enroll_device(site, name="cam-1").device


@pytest.fixture
def rollout(db: None) -> Rollout:
    version = ModelVersion.objects.filter(model=registry_model("detector")).get()
    return Rollout.objects.create(version=version, target={}, plan={}, state=Rollout.RUNNING)


def test_anonymous_visitors_are_sent_to_sign_in(client: Client) -> None:
    response = client.get(URL)
    assert response.status_code == 302 and response["Location"].startswith("/login/")


def test_each_row_says_who_what_which_target_when_why_and_the_data(
    admin_client: Client, admin_user: Any, site: Site, camera: Device, rollout: Rollout
) -> None:
    AuditLog.record(actor=admin_user, action="device.revoke", target=camera, reason="stolen from the line")
    AuditLog.record(actor=admin_user, action="site.rollback", target=site, reason="false rejects", models=[])
    AuditLog.record(actor=None, action="rollout.start", target=rollout, stage=0, before=None, ok=True)

    status, body = get(admin_client)

    assert status == 200
    assert f'<a href="/devices/{camera.device_id}/">cam-1 ({camera.device_id})</a>' in body
    assert '<a href="/sites/plant-a/">plant-a</a>' in body
    assert f'<a href="/rollouts/{rollout.pk}/">#{rollout.pk}</a>' in body
    assert 'data-testid="reason">stolen from the line<' in body and "no reason given" in body
    assert 'data-testid="actor">alice<' in body and '<span class="muted">system</span>' in body
    assert "<dt>before</dt><dd>none</dd>" in body and "<dt>ok</dt><dd>yes</dd>" in body
    assert "<dt>models</dt><dd>none</dd>" in body
    assert "None" not in body
    newest_first = list(AuditLog.objects.order_by("-created_at", "-pk").values_list("pk", flat=True))
    assert entries(body) == newest_first


def test_a_target_that_no_longer_exists_is_named_without_a_link(admin_client: Client, admin_user: Any) -> None:
    gone = Site.objects.create(slug="closed", name="Closed")
    AuditLog.record(actor=admin_user, action="site.create", target=gone)
    pk = gone.pk
    gone.delete()
    body = get(admin_client)[1]
    assert f"Site\n        #{pk}" in body and "/sites/closed/" not in body


def test_data_values_read_as_text() -> None:
    assert show(None) == "none" and show("") == "none" and show([]) == "none"
    assert show(["read", "fleet"]) == "read, fleet" and show(False) == "no"
    assert show({"b": 1, "a": [1, {"x": None}]}) == '{"a": [1, {"x": null}], "b": 1}'
    assert show("2027-01-04T09:37:31.646458+00:00") == "2027-01-04 09:37 UTC"
    assert show("2027-01-04T09:37") == "2027-01-04T09:37" and show("2027-99-04T09:37Z") == "2027-99-04T09:37Z"


# --- filters -------------------------------------------------------------------------------


@pytest.fixture
def log(admin_user: Any, viewer_user: Any, site: Site, other_site: Site, camera: Device) -> dict[str, AuditLog]:
    found = {
        "pause": AuditLog.record(actor=admin_user, action="rollout.pause", target=site, reason="night shift"),
        "abort": AuditLog.record(actor=admin_user, action="rollout.abort", target=other_site, reason="Bad LABELS"),
        "revoke": AuditLog.record(actor=viewer_user, action="device.revoke", target=camera, reason="stolen"),
    }
    AuditLog.objects.filter(pk=found["pause"].pk).update(created_at=timezone.now() - timedelta(days=10))
    return found


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"actor": "victor"}, ["revoke"]),
        ({"action": "rollout.pause"}, ["pause"]),
        ({"action": "rollout"}, ["abort", "pause"]),
        ({"action": "rollout.paus"}, []),
        ({"target_type": "fleet.site"}, ["abort", "pause"]),
        ({"target_type": "fleet.device", "target_id": "nope"}, []),
        ({"q": "labels"}, ["abort"]),
        ({"since": "{yesterday}"}, ["revoke", "abort"]),
        ({"until": "{yesterday}"}, ["pause"]),
        ({"since": "{ten_days_ago}", "until": "{ten_days_ago}"}, ["pause"]),
    ],
)
def test_the_filters_narrow_the_log(
    admin_client: Client, log: dict[str, AuditLog], params: dict[str, str], expected: list[str]
) -> None:
    today = timezone.localdate()
    days = {"yesterday": today - timedelta(days=1), "ten_days_ago": today - timedelta(days=10)}
    query = {k: v.format(**{name: day.isoformat() for name, day in days.items()}) for k, v in params.items()}
    status, body = get(admin_client, **query)
    assert status == 200
    shown = [name for name, entry in sorted(log.items(), key=lambda kv: -kv[1].pk) if entry.pk in entries(body)]
    assert sorted(shown) == sorted(expected)
    if not expected:
        assert "No entries match the filter." in body


def test_a_target_filter_shows_that_targets_history(
    admin_client: Client, log: dict[str, AuditLog], camera: Device
) -> None:
    body = get(admin_client, target_type="fleet.device", target_id=camera.device_id)[1]
    assert (
        log["revoke"].pk in entries(body)
        and len(entries(body))
        == 1
        + AuditLog.objects.filter(target_type="fleet.device", target_id=camera.device_id)
        .exclude(pk=log["revoke"].pk)
        .count()
    )


@pytest.mark.parametrize(
    "params", [{"since": "yesterday"}, {"until": "2026-13-01"}, {"before": "x"}, {"after": "1.99999999999999999999"}]
)
def test_a_filter_or_page_link_the_server_cannot_read_is_a_400_that_lists_nothing(
    admin_client: Client, log: dict[str, AuditLog], params: dict[str, str]
) -> None:
    status, body = get(admin_client, **params)
    assert status == 400 and 'data-testid="filter-error"' in body and "data-entry=" not in body


def test_the_widest_dates_are_answered(admin_client: Client, log: dict[str, AuditLog]) -> None:
    status, body = get(admin_client, since="0001-01-01", until="9999-12-31")
    assert status == 200 and len(entries(body)) == AuditLog.objects.count()


# --- paging --------------------------------------------------------------------------------


def test_pages_go_by_key_older_and_back_newer(admin_client: Client, admin_user: Any, site: Site) -> None:
    AuditLog.objects.bulk_create(
        [AuditLog.entry(actor=admin_user, action="site.touch", target=site, n=i) for i in range(PER_PAGE * 2 + 7)]
    )
    everything = list(AuditLog.objects.order_by("-created_at", "-pk").values_list("pk", flat=True))

    first = get(admin_client, action="site.touch")[1]
    assert entries(first) == everything[:PER_PAGE] and 'data-testid="newer"' not in first
    older = re.search(r'href="\?action=site.touch&amp;before=([\d.]+)" rel="next"', first)
    assert older

    second = get(admin_client, action="site.touch", before=older[1])[1]
    assert entries(second) == everything[PER_PAGE : 2 * PER_PAGE]
    newer = re.search(r'after=([\d.]+)" rel="prev"', second)
    last = re.search(r'before=([\d.]+)" rel="next"', second)
    assert newer and last

    assert entries(get(admin_client, action="site.touch", after=newer[1])[1]) == everything[:PER_PAGE]
    third = get(admin_client, action="site.touch", before=last[1])[1]
    assert entries(third) == everything[2 * PER_PAGE :] and 'data-testid="older"' not in third


def test_rows_written_in_one_moment_are_paged_by_id(admin_client: Client, admin_user: Any, site: Site) -> None:
    AuditLog.objects.bulk_create(
        [AuditLog.entry(actor=admin_user, action="site.touch", target=site) for _ in range(PER_PAGE + 3)]
    )
    AuditLog.objects.update(created_at=timezone.now())
    first = get(admin_client)[1]
    cursor = re.search(r'before=([\d.]+)" rel="next"', first)
    assert cursor
    second = get(admin_client, before=cursor[1])[1]
    assert sorted(entries(first) + entries(second)) == sorted(AuditLog.objects.values_list("pk", flat=True))
    assert not set(entries(first)) & set(entries(second))


def test_the_query_count_is_the_same_at_two_sizes(
    admin_user: Any, site: Site, other_site: Site, camera: Device, rollout: Rollout
) -> None:
    olga = operator_of(site, other_site)
    clients = {"admin": signed_in(admin_user), "operator": signed_in(olga)}

    def add(times: int) -> None:
        rows = []
        for i in range(times):
            rows += [
                AuditLog.entry(actor=olga, action="device.revoke", target=camera, reason=f"r{i}"),
                AuditLog.entry(actor=olga, action="site.rollback", target=[site, other_site][i % 2]),
                AuditLog.entry(actor=None, action="rollout.pause", target=rollout, i=i),
            ]
        AuditLog.objects.bulk_create(rows)

    def count(who: str, **params: str) -> int:
        with CaptureQueriesContext(connection) as queries:
            assert clients[who].get(URL, params).status_code == 200
        return len(queries)

    add(3)
    few = {who: count(who) for who in clients}
    filtered = count("admin", action="site", q="r")
    add(200)
    assert {who: count(who) for who in clients} == few
    assert count("admin", action="site", q="r") == filtered
    older = re.search(r'before=([\d.]+)" rel="next"', clients["admin"].get(URL).content.decode())
    assert older and count("admin", before=older[1]) == few["admin"] + 1  # one more: is there a newer page?


# --- who sees what -------------------------------------------------------------------------


def test_an_admin_sees_every_entry(admin_client: Client, log: dict[str, AuditLog]) -> None:
    body = get(admin_client)[1]
    assert set(entries(body)) == set(AuditLog.objects.values_list("pk", flat=True))
    assert "Every change made through edgefleet" in body


def test_an_operator_sees_their_sites_their_devices_and_their_own_entries_only(
    admin_user: Any, site: Site, other_site: Site, camera: Device, enroll_device: Callable[..., Any], rollout: Rollout
) -> None:
    far = enroll_device(other_site, name="cam-far").device
    olga = operator_of(site)
    AuditLog.objects.all().delete()
    mine = [
        AuditLog.record(actor=admin_user, action="site.rollback", target=site),
        AuditLog.record(actor=admin_user, action="device.revoke", target=camera),
        AuditLog.record(actor=olga, action="rollout.pause", target=rollout),
        AuditLog.record(actor=admin_user, action="user.set_role", target=olga),
    ]
    AuditLog.record(actor=admin_user, action="site.rollback", target=other_site)
    AuditLog.record(actor=admin_user, action="device.revoke", target=far)
    AuditLog.record(actor=admin_user, action="rollout.pause", target=rollout)
    AuditLog.record(actor=admin_user, action="api_token.issue", target=admin_user)

    status, body = get(signed_in(olga))

    assert status == 200 and sorted(entries(body)) == sorted(e.pk for e in mine)
    assert "the sites you operate" in body
    # A filter cannot widen what the operator sees.
    assert entries(get(signed_in(olga), target_type="fleet.site", target_id=str(other_site.pk))[1]) == []


def test_a_viewer_sees_only_entries_they_made_or_about_them(viewer_user: Any, log: dict[str, AuditLog]) -> None:
    body = get(signed_in(viewer_user))[1]
    assert entries(body) == [log["revoke"].pk]
    assert "Admins see the whole log." in body

"""Acknowledging an alert with a note: who sees the form, who the API lets through, and the note shown afterwards."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from rest_framework.test import APIClient

from core.errors import ServiceError
from core.models import AuditLog
from fleet.access import set_role
from fleet.models import Site
from telemetry.models import Alert
from tests.dashboard.fixtures import open_alert

pytestmark = pytest.mark.django_db

URL = "/alerts/"


@pytest.fixture
def alert(site: Site, enroll_device: Callable[..., Any]) -> Alert:
    return open_alert(enroll_device(site, name="cam-hot").device)


def operator_of(*sites: Site, name: str = "olga") -> Any:
    user = get_user_model().objects.create_user(name, password=f"pw-{name}-123")
    set_role(actor=None, user=user, kind="operator", sites=sites)
    return user


def signed_in(user: Any) -> APIClient:
    client = APIClient()
    client.force_login(user)
    return client


def acknowledge(client: APIClient, alert: Alert, note: str = "") -> Any:
    return client.post(f"/api/v1/alerts/{alert.pk}/acknowledge/", {"note": note}, format="json")


# --- the page ------------------------------------------------------------------------------


def test_an_admin_gets_a_note_field_and_the_acknowledge_button(admin_client: Client, alert: Alert) -> None:
    body = admin_client.get(URL).content.decode()
    assert f'data-testid="ack-{alert.pk}"' in body and 'name="note"' in body
    assert f'data-acknowledge="/api/v1/alerts/{alert.pk}/acknowledge/"' in body


def test_a_viewer_gets_no_form(viewer_client: Client, alert: Alert) -> None:
    body = viewer_client.get(URL).content.decode()
    assert f'data-alert="{alert.pk}"' in body
    assert "data-acknowledge" not in body and 'name="note"' not in body


def test_an_operator_gets_the_form_for_their_sites_alerts_only(
    site: Site, other_site: Site, alert: Alert, enroll_device: Callable[..., Any]
) -> None:
    elsewhere = open_alert(enroll_device(other_site, name="cam-far").device)
    body = signed_in(operator_of(site)).get(URL).content.decode()
    assert f'data-testid="ack-{alert.pk}"' in body
    assert f'data-alert="{elsewhere.pk}"' in body and f'data-testid="ack-{elsewhere.pk}"' not in body


def test_an_acknowledged_alert_shows_who_when_and_the_note(admin_client: Client, admin_user: Any, alert: Alert) -> None:
    alert.acknowledge(admin_user, note="Fan replaced on <cam-hot>; watching it")
    body = admin_client.get(URL).content.decode()
    assert 'data-testid="acknowledged-by">by alice, <time' in body
    assert 'data-testid="ack-note">Fan replaced on &lt;cam-hot&gt;; watching it<' in body
    assert f'data-testid="ack-{alert.pk}"' not in body
    assert "None" not in body


def test_an_acknowledgement_without_a_note_shows_no_empty_note(
    admin_client: Client, admin_user: Any, alert: Alert
) -> None:
    alert.acknowledge(admin_user)
    body = admin_client.get(URL).content.decode()
    assert 'data-testid="acknowledged-by"' in body and 'data-testid="ack-note"' not in body


def test_the_page_query_count_does_not_grow_with_alerts_for_an_operator(
    site: Site, alert: Alert, enroll_device: Callable[..., Any]
) -> None:
    client = signed_in(operator_of(site))

    def count() -> int:
        with CaptureQueriesContext(connection) as queries:
            assert client.get(URL).status_code == 200
        return len(queries)

    few = count()
    for i in range(5):
        device = enroll_device(site, name=f"hot-{i}").device
        Alert.objects.create(rule=alert.rule, device=device, since=alert.since, state="open")
    assert count() == few


# --- the API's acknowledge, which the page's form posts to -----------------------------------


def test_an_operator_of_the_site_acknowledges_with_a_note_and_it_is_audited(site: Site, alert: Alert) -> None:
    olga = operator_of(site)
    response = acknowledge(signed_in(olga), alert, note="on site, swapping the fan")
    assert response.status_code == 200
    body = response.json()
    assert body["state"] == "acknowledged" and body["acknowledged_by"] == "olga"
    assert body["acknowledged_note"] == "on site, swapping the fan" and body["acknowledged_at"]
    alert.refresh_from_db()
    assert (alert.state, alert.acknowledged_note) == (Alert.State.ACKNOWLEDGED, "on site, swapping the fan")
    entry = AuditLog.objects.get(action="alert.acknowledge")
    assert (entry.actor, entry.reason, entry.data["alert"]) == (olga, "on site, swapping the fan", alert.pk)


def test_an_operator_of_another_site_is_refused_with_site_forbidden(site: Site, other_site: Site, alert: Alert) -> None:
    response = acknowledge(signed_in(operator_of(other_site)), alert, note="not mine")
    assert response.status_code == 403
    assert response.json()["code"] == "site_forbidden" and "plant-a" in response.json()["detail"]
    alert.refresh_from_db()
    assert alert.state == Alert.State.OPEN and alert.acknowledged_note == ""
    assert not AuditLog.objects.filter(action="alert.acknowledge").exists()


def test_a_viewer_is_refused(viewer_client: APIClient, alert: Alert) -> None:
    assert acknowledge(viewer_client, alert, note="me too").status_code == 403
    alert.refresh_from_db()
    assert alert.state == Alert.State.OPEN


def test_the_service_refuses_an_operator_of_another_site_too(site: Site, other_site: Site, alert: Alert) -> None:
    with pytest.raises(ServiceError) as refused:
        alert.acknowledge(operator_of(other_site), note="from the shell")
    assert refused.value.code == "site_forbidden"
    assert Alert.objects.get(pk=alert.pk).state == Alert.State.OPEN


def test_a_token_with_the_fleet_scope_acknowledges_as_its_admin(
    token_client: Callable[..., APIClient], alert: Alert
) -> None:
    response = acknowledge(token_client("fleet"), alert, note="from the pager bot")
    assert response.status_code == 200 and response.json()["acknowledged_note"] == "from the pager bot"


def test_acknowledging_twice_is_a_conflict_and_keeps_the_first_note(admin_client: APIClient, alert: Alert) -> None:
    assert acknowledge(admin_client, alert, note="first").status_code == 200
    second = acknowledge(admin_client, alert, note="second")
    assert second.status_code == 409 and second.json()["code"] == "alert_not_open"
    alert.refresh_from_db()
    assert alert.acknowledged_note == "first"

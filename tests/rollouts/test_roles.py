"""Roles on the API: a viewer only reads, an operator acts on their own sites only, an admin everywhere.

The rules live in the services (``fleet.access``), so a token acts with its
user's role too, and every refusal is the API's one error shape.
"""

from __future__ import annotations

import io
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.management import CommandError, call_command
from rest_framework.test import APIClient

from core import services as core_services
from core.errors import ServiceError
from core.models import ApiToken, AuditLog, Role
from fleet import access
from fleet.models import Device, Site
from rollouts.models import Rollout, SiteRollback
from tests.rollouts.helpers import drive, start_rollout

pytestmark = pytest.mark.django_db

PLAN = {"stages": [{"kind": "percent", "value": 100}]}


@pytest.fixture
def operator(site: Site, admin_user: Any) -> Any:
    """Olga operates plant-a and nothing else."""
    user = get_user_model().objects.create_user("olga", password="pw-olga-123")
    access.set_role(actor=admin_user, user=user, kind=Role.OPERATOR, sites=[site], reason="line lead")
    return user


def client_for(user: Any) -> APIClient:
    client = APIClient()
    client.force_login(user)
    return client


def rollout_body(target: dict[str, Any]) -> dict[str, Any]:
    return {"model": "parts", "version": "2.0.0", "target": target, "plan": PLAN, "reason": "2.0.0"}


def test_a_viewer_reads_everything_and_every_write_is_refused(viewer_client, fleet_on_v1, site):
    device = fleet_on_v1[0]
    assert viewer_client.get("/api/v1/rollouts/").status_code == 200
    assert viewer_client.get(f"/api/v1/sites/{site.slug}/rollback/").status_code == 200
    writes = [
        ("/api/v1/rollouts/", rollout_body({"sites": [site.slug]})),
        (f"/api/v1/sites/{site.slug}/rollback/", {"reason": "because"}),
        (f"/api/v1/devices/{device.device_id}/revoke/", {"reason": "because"}),
        ("/api/v1/sites/", {"slug": "plant-z", "name": "Plant Z"}),
    ]
    for url, body in writes:
        answer = viewer_client.post(url, body, format="json")
        assert answer.status_code == 403, url
        assert answer.json()["code"] == "permission_denied"
    assert not Rollout.objects.exists() and not SiteRollback.objects.exists()
    assert Device.objects.filter(revoked_at__isnull=False).count() == 0


def test_an_operator_starts_and_steers_a_rollout_at_their_site_only(operator, fleet_on_v1, site, other_site):
    olga = client_for(operator)

    everywhere = olga.post("/api/v1/rollouts/", rollout_body({"running_model": "parts"}), format="json")
    mine = olga.post("/api/v1/rollouts/", rollout_body({"sites": [site.slug]}), format="json")

    assert everywhere.status_code == 403, everywhere.content
    assert everywhere.json()["code"] == "site_forbidden" and "plant-b" in everywhere.json()["detail"]
    assert mine.status_code == 201, mine.content
    paused = olga.post(f"/api/v1/rollouts/{mine.json()['id']}/pause/", {"reason": "shift change"}, format="json")
    assert paused.status_code == 200 and paused.json()["state"] == "paused"
    entry = AuditLog.objects.get(action="rollout.pause")
    assert entry.actor == operator and entry.reason == "shift change"


def test_an_operator_cannot_steer_a_rollout_that_also_touches_another_site(operator, fleet_on_v1, versions):
    _, v2 = versions
    rollout = start_rollout(v2, plan=PLAN)

    for verb in ("pause", "abort", "approve"):
        answer = client_for(operator).post(f"/api/v1/rollouts/{rollout.pk}/{verb}/", {}, format="json")
        assert answer.status_code == 403 and answer.json()["code"] == "site_forbidden", verb
    rollout.refresh_from_db()
    assert rollout.state == Rollout.PENDING
    assert not AuditLog.objects.filter(action__in=["rollout.pause", "rollout.abort", "rollout.approve"]).exists()


def test_an_operator_rolls_back_their_site_and_is_refused_at_another(operator, fleet_on_v1, versions, site, other_site):
    v1, v2 = versions
    done = start_rollout(v2, plan=PLAN)
    drive(done, v1, v2)
    olga = client_for(operator)

    refused = olga.post(f"/api/v1/sites/{other_site.slug}/rollback/", {"reason": "false rejects"}, format="json")
    allowed = olga.post(f"/api/v1/sites/{site.slug}/rollback/", {"reason": "false rejects"}, format="json")

    assert refused.status_code == 403 and refused.json()["code"] == "site_forbidden"
    assert allowed.status_code == 200, allowed.content
    assert allowed.json()["done"] is True
    entry = AuditLog.objects.get(action="site.rollback")
    assert entry.target_id == str(site.pk) and entry.actor == operator


def test_an_operator_changes_their_sites_settings_but_creates_no_site_and_touches_no_other_device(
    operator, fleet_on_v1, site, other_site
):
    olga = client_for(operator)
    theirs = next(d for d in fleet_on_v1 if d.site_id == other_site.pk)

    budget = olga.patch(f"/api/v1/sites/{site.slug}/", {"latency_budget_ms": 40}, format="json")
    other = olga.patch(f"/api/v1/sites/{other_site.slug}/", {"latency_budget_ms": 40}, format="json")
    created = olga.post("/api/v1/sites/", {"slug": "plant-z", "name": "Plant Z"}, format="json")
    enrolling = olga.post(f"/api/v1/sites/{site.slug}/enrollment-tokens/", {}, format="json")
    revoked = olga.post(f"/api/v1/devices/{theirs.device_id}/revoke/", {"reason": "stolen"}, format="json")
    renamed = olga.patch(f"/api/v1/devices/{theirs.device_id}/", {"name": "mine-now"}, format="json")

    assert budget.status_code == 200 and budget.json()["latency_budget_ms"] == 40
    assert other.status_code == 403 and other.json()["code"] == "site_forbidden"
    assert created.status_code == 403 and created.json()["code"] == "admin_only"
    assert enrolling.status_code == 403 and enrolling.json()["code"] == "admin_only"
    assert revoked.status_code == 403 and revoked.json()["code"] == "site_forbidden"
    assert renamed.status_code == 403 and renamed.json()["code"] == "site_forbidden"
    assert Site.objects.get(pk=other_site.pk).latency_budget_ms is None
    assert not Site.objects.filter(slug="plant-z").exists()
    assert Device.objects.get(pk=theirs.pk).name == theirs.name
    assert Device.objects.filter(revoked_at__isnull=False).count() == 0


def test_an_operators_token_is_bounded_by_their_role_and_sites(operator, fleet_on_v1, site):
    with pytest.raises(ValidationError, match="operator: their tokens may have only read, fleet, rollout"):
        core_services.issue_token(actor=operator, user=operator, name="ci", scopes=["publish"])
    _, key = ApiToken.issue(operator, name="ops", scopes=["rollout"])
    ci = APIClient()
    ci.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")

    assert ci.post("/api/v1/rollouts/", rollout_body({"running_model": "parts"}), format="json").status_code == 403
    assert ci.post("/api/v1/rollouts/", rollout_body({"sites": [site.slug]}), format="json").status_code == 201
    fleet_wide = ci.post("/api/v1/models/parts/versions/2.0.0/rollback/", {"reason": "bad"}, format="json")
    assert fleet_wide.status_code == 403, "rolling a version back everywhere is an admin's"


def test_a_demoted_admin_loses_writes_at_once_and_their_tokens_with_them(admin_client, admin_user, fleet_on_v1, site):
    _, key = ApiToken.issue(admin_user, name="ci", scopes=["rollout"])
    root = get_user_model().objects.create_user("root", password="pw-root-123", is_superuser=True)
    access.set_role(actor=root, user=admin_user, kind=Role.VIEWER, reason="left the team")
    ci = APIClient()
    ci.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")

    assert ci.post("/api/v1/rollouts/", rollout_body({"sites": [site.slug]}), format="json").status_code == 403
    assert admin_client.post(f"/api/v1/sites/{site.slug}/rollback/", {"reason": "x"}, format="json").status_code == 403
    entry = AuditLog.objects.get(action="user.set_role", target_id=str(admin_user.pk))
    assert entry.actor == root and entry.data["role"] == "viewer" and entry.data["before"] is None


def test_roles_are_given_by_admins_only_and_stay_coherent(admin_user, operator, site):
    with pytest.raises(ServiceError, match="Only an admin may change roles"):
        access.set_role(actor=operator, user=operator, kind=Role.ADMIN)
    with pytest.raises(ServiceError, match="needs at least one site"):
        access.set_role(actor=admin_user, user=operator, kind=Role.OPERATOR, sites=[])
    with pytest.raises(ServiceError, match="cannot take their own admin role away"):
        access.set_role(actor=admin_user, user=admin_user, kind=Role.VIEWER)
    assert access.operated_site_ids(operator) == frozenset({site.pk})
    assert access.operated_site_ids(admin_user) is None


def test_the_host_administrator_sets_roles_from_the_command_line(viewer_user, site, other_site):
    out = io.StringIO()
    call_command("set_role", "victor", "operator", "--site", "plant-b", "--site", "plant-a", stdout=out)

    assert out.getvalue().strip() == "victor is now operator of plant-a, plant-b."
    assert access.operated_site_ids(viewer_user) == frozenset({site.pk, other_site.pk})
    assert AuditLog.objects.get(action="user.set_role").actor_label == "system"
    with pytest.raises(CommandError, match="No site plant-z"):
        call_command("set_role", "victor", "operator", "--site", "plant-z")
    with pytest.raises(CommandError, match="Only an operator has sites"):
        call_command("set_role", "victor", "viewer", "--site", "plant-a")

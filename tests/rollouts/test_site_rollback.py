"""POST /api/v1/sites/{slug}/rollback/: a site back to its last known-good version, previewed, audited, idempotent."""

from __future__ import annotations

import re
from typing import Any

import pytest

from core.models import AuditLog
from fleet.models import Device, Site
from registry.models import ModelVersion
from rollouts import scheduler
from rollouts.models import Rollout, SiteRollback
from tests.registry.conftest import make_classifier, make_png_images, metadata_for
from tests.registry.helpers import publish
from tests.rollouts.helpers import drive, start_rollout

pytestmark = pytest.mark.django_db


@pytest.fixture
def v3(versions: Any, token_client: Any) -> ModelVersion:
    response = publish(
        token_client("publish"), make_classifier(seed=9), metadata_for("3.0.0"), images=make_png_images()
    )
    assert response.status_code == 201, response.content
    return ModelVersion.objects.get(version="3.0.0")


def versions_at(site: Site) -> list[str]:
    return sorted({d.desired["model"]["version"] for d in Device.objects.filter(site=site)})


def test_a_site_goes_back_to_the_last_version_a_completed_rollout_brought_it(
    versions, v3, fleet_on_v1, site, token_client
):
    v1, v2 = versions
    good = start_rollout(v2)
    drive(good, v1, v2)
    good.refresh_from_db()
    assert good.state == Rollout.COMPLETED
    # 3.0.0 goes out and passes its canary; then the site's operators see it misbehave.
    plan = {"stages": [{"kind": "sites", "value": 1}, {"kind": "percent", "value": 100, "requires_approval": True}]}
    bad = start_rollout(v3, plan=plan)
    drive(bad, v2, v3, ticks=6)
    bad.refresh_from_db()
    wave = {d.site for d in Device.objects.all() if d.desired["model"]["version"] == "3.0.0"}
    assert bad.state == Rollout.RUNNING and len(wave) == 1
    hit = wave.pop()
    offline = Device.objects.filter(site=hit).first()
    Device.objects.filter(pk=offline.pk).update(online=False)
    ci = token_client("rollout")
    url = f"/api/v1/sites/{hit.slug}/rollback/"

    preview = ci.get(url)

    assert preview.status_code == 200, preview.content
    body = preview.json()
    count = Device.objects.filter(site=hit).count()
    assert body["done"] is False and body["stops_rollouts"] == [bad.pk]
    assert body["models"] == [
        {"model": "parts", "version": "2.0.0", "devices": count, "offline_devices": 1, "from_versions": ["3.0.0"]}
    ]
    assert ci.post(url, {"reason": "x", "dry_run": True}, format="json").json() == body
    assert versions_at(hit) == ["3.0.0"], "a preview changes nothing"

    done = ci.post(url, {"reason": "false rejects on line 3"}, format="json")

    assert done.status_code == 200 and done.json()["done"] is True
    assert versions_at(hit) == ["2.0.0"]
    offline.refresh_from_db()
    assert offline.desired["rollback_to"] == "2.0.0" and offline.desired_document, "signed and retained for its return"
    bad.refresh_from_db()
    assert bad.state == Rollout.ABORTED
    scheduler.tick()
    assert versions_at(hit) == ["2.0.0"], "the stopped rollout sends nothing more"
    row = AuditLog.objects.get(action="site.rollback")
    assert (row.actor_label, row.reason, row.target_id) == ("alice", "false rejects on line 3", str(hit.pk))
    assert SiteRollback.objects.get().from_versions == ["3.0.0"]

    again = ci.post(url, {"reason": "clicked twice"}, format="json")
    assert again.status_code == 200 and again.json()["models"][0]["devices"] == 0
    assert versions_at(hit) == ["2.0.0"]


def test_a_site_no_rollout_ever_completed_at_has_nothing_to_return_to(versions, fleet_on_v1, site, token_client):
    ci = token_client("rollout")
    assert ci.get(f"/api/v1/sites/{site.slug}/rollback/").json()["without_known_good"] == ["parts"]
    refused = ci.post(f"/api/v1/sites/{site.slug}/rollback/", {"reason": "panic"}, format="json")
    assert refused.status_code == 409 and refused.json()["code"] == "no_known_good"


def test_a_rollback_needs_a_reason_and_the_rollout_scope(versions, fleet_on_v1, site, token_client):
    url = f"/api/v1/sites/{site.slug}/rollback/"
    missing = token_client("rollout").post(url, {}, format="json")
    assert missing.status_code == 400 and list(missing.json()["fields"]) == ["reason"]
    assert token_client("fleet").post(url, {"reason": "x"}, format="json").status_code == 403
    assert token_client("rollout").get("/api/v1/sites/nowhere/rollback/").status_code == 404


@pytest.mark.parametrize("reason", ["   ", "\u001d", "\t\n", "a lamp\u0000failed"])
def test_a_reason_of_spaces_or_control_characters_alone_or_with_a_nul_is_refused_as_the_schema_says(
    versions, fleet_on_v1, site, token_client, reason
):
    answer = token_client("rollout").post(f"/api/v1/sites/{site.slug}/rollback/", {"reason": reason}, format="json")
    schema = token_client("read").get("/api/v1/schema/?format=json").json()

    assert answer.status_code == 400 and list(answer.json()["fields"]) == ["reason"]
    pattern = schema["components"]["schemas"]["SiteRollbackRequest"]["properties"]["reason"]["pattern"]
    assert re.search(pattern, reason) is None and re.search(pattern, " a lamp failed ")
    assert not AuditLog.objects.filter(action="site.rollback").exists()

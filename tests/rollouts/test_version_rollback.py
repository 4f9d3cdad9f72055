"""Fleet-wide rollback of a version: every device sent it goes back to the version before, previewed and audited."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from core.models import ApiToken, AuditLog
from fleet.models import Device
from registry import cli, client
from registry.models import ModelVersion
from rollouts.models import Rollout
from tests.rollouts.helpers import drive, start_rollout

pytestmark = pytest.mark.django_db

URL = "/api/v1/models/parts/versions/2.0.0/rollback/"


def sent(version: str) -> list[Device]:
    return [d for d in Device.objects.all() if (d.desired.get("model") or {}).get("version") == version]


def test_a_version_goes_back_fleet_wide_to_the_one_before_its_rollouts_stop_and_it_is_deprecated(
    versions, fleet_on_v1, token_client
):
    v1, v2 = versions
    running = start_rollout(v2)
    drive(running, v1, v2, ticks=3)  # part of the fleet on 2.0.0, the rollout still going
    running.refresh_from_db()
    assert running.state == Rollout.RUNNING and sent("2.0.0")
    on_v2 = len(sent("2.0.0"))
    Device.objects.filter(pk=sent("2.0.0")[0].pk).update(online=False)
    ci = token_client("rollout")

    preview = ci.get(URL)

    assert preview.status_code == 200, preview.content
    assert preview.json() == {
        "model": "parts",
        "version": "2.0.0",
        "to_version": "1.0.0",
        "done": False,
        "devices": on_v2,
        "offline_devices": 1,
        "stops_rollouts": [running.pk],
    }
    assert len(sent("2.0.0")) == on_v2, "a preview changes nothing"

    done = ci.post(URL, {"reason": "false rejects everywhere"}, format="json")

    assert done.status_code == 200 and done.json()["done"] is True
    assert sent("2.0.0") == [] and len(sent("1.0.0")) == len(fleet_on_v1)
    assert all(d.desired.get("rollback_to") == "1.0.0" for d in Device.objects.all() if d.desired_generation > 2)
    running.refresh_from_db()
    assert running.state == Rollout.ABORTED
    assert ModelVersion.objects.get(pk=v2.pk).is_deprecated
    assert AuditLog.objects.filter(action="model_version.rollback", reason="false rejects everywhere").count() == 1

    again = ci.post(URL, {"reason": "once more"}, format="json")
    assert again.status_code == 200 and again.json()["devices"] == 0, "idempotent"


def test_a_version_with_nothing_before_it_or_no_reason_is_refused(versions, fleet_on_v1, token_client):
    ci = token_client("rollout")
    assert ci.post("/api/v1/models/parts/versions/1.0.0/rollback/", {"reason": "x"}, format="json").status_code == 409
    assert ci.post(URL, {"reason": "  "}, format="json").status_code == 400
    assert token_client("read").post(URL, {"reason": "x"}, format="json").status_code == 403
    assert ci.get("/api/v1/models/parts/versions/9.9.9/rollback/").status_code == 404


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_the_cli_previews_then_rolls_a_version_back(versions, fleet_on_v1, live_server, admin_user):
    v1, v2 = versions
    drive(start_rollout(v2), v1, v2, ticks=3)
    _, key = ApiToken.issue(admin_user, name="ci", scopes=["rollout"])
    options = ["--server", live_server.url, "--token", key]
    runner = CliRunner()

    command = ["rollback", "version", "parts", "2.0.0", "--reason", "bad"]
    preview = runner.invoke(cli.app, [*command, "--dry-run", *options])
    assert preview.exit_code == client.EXIT_OK, preview.output
    assert json.loads(preview.stdout)["to_version"] == "1.0.0"

    done = runner.invoke(cli.app, [*command, "--yes", *options])
    assert done.exit_code == client.EXIT_OK, done.output
    assert json.loads(done.stdout)["done"] is True and sent("2.0.0") == []

"""``edgefleet rollout start|status`` and ``edgefleet rollback site`` against the real API on a live server."""

from __future__ import annotations

import json
from typing import Any

import pytest
from typer.testing import CliRunner

from core.models import ApiToken
from registry import cli, client
from rollouts.models import Rollout, RolloutTemplate
from tests.rollouts.helpers import PLAN, drive, start_rollout

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def ci(live_server: Any, admin_user: Any) -> list[str]:
    """The server and token options of a CI job holding a token with the rollout scope."""
    _, key = ApiToken.issue(admin_user, name="ci", scopes=["rollout", "publish"])
    return ["--server", live_server.url, "--token", key]


def run(*args: str) -> Any:
    return CliRunner().invoke(cli.app, list(args), catch_exceptions=False)


def answer(result: Any) -> dict[str, Any]:
    return json.loads(result.stdout)


def test_ci_starts_a_rollout_from_a_template_on_the_devices_running_the_model(versions, fleet_on_v1, ci):
    RolloutTemplate.objects.create(name="canary-10-all", plan=PLAN, gate_defaults={})

    started = run("rollout", "start", "parts", "2.0.0", "--template", "canary-10-all", "--reason", "v2.0.0", *ci)

    assert started.exit_code == client.EXIT_OK, started.output
    rollout = Rollout.objects.get(pk=answer(started)["id"])
    assert rollout.version.version == "2.0.0" and rollout.target == {"running_model": "parts"}
    assert rollout.devices.count() == len(fleet_on_v1)


@pytest.mark.parametrize(
    ("state", "code"),
    [
        ("completed", client.EXIT_OK),
        ("halted", client.EXIT_HALTED),
        ("reverted", client.EXIT_REVERTED),
        ("aborted", client.EXIT_ABORTED),
        ("running", client.EXIT_TIMEOUT),
    ],
)
def test_status_wait_exits_with_how_the_rollout_ended(versions, fleet_on_v1, ci, state, code):
    RolloutTemplate.objects.create(name="canary-10-all", plan=PLAN, gate_defaults={})
    started = run("rollout", "start", "parts", "2.0.0", "--template", "canary-10-all", *ci)
    rollout_id = answer(started)["id"]
    Rollout.objects.filter(pk=rollout_id).update(state=state)

    followed = run("rollout", "status", str(rollout_id), "--wait", "--timeout", "0.5", "--interval", "0.1", *ci)

    assert followed.exit_code == code, followed.output
    assert answer(followed)["state"] == state


def test_an_unknown_template_or_a_token_without_the_scope_fails_with_cis_codes(versions, fleet_on_v1, ci, admin_user):
    missing = run("rollout", "start", "parts", "2.0.0", "--template", "nope", *ci)
    assert missing.exit_code == client.EXIT_INVALID, missing.output
    _, key = ApiToken.issue(admin_user, name="read", scopes=["read"])
    refused = run("rollout", "start", "parts", "2.0.0", "--template", "nope", "--server", ci[1], "--token", key)
    assert refused.exit_code == client.EXIT_AUTH


def test_a_site_rollback_shows_its_plan_and_does_it_only_when_told(versions, fleet_on_v1, site, ci):
    v1, v2 = versions
    good = start_rollout(v2)
    drive(good, v1, v2)  # 2.0.0 completes at the site: its known-good version
    preview = run("rollback", "site", site.slug, "--reason", "bad lighting model", "--dry-run", *ci)
    assert preview.exit_code == client.EXIT_OK, preview.output
    assert answer(preview)["done"] is False and answer(preview)["site"] == site.slug

    declined = CliRunner().invoke(
        cli.app, ["rollback", "site", site.slug, "--reason", "bad lighting model", *ci], input="n\n"
    )
    assert declined.exit_code == client.EXIT_USAGE

    done = run("rollback", "site", site.slug, "--reason", "bad lighting model", "--yes", *ci)
    assert done.exit_code == client.EXIT_OK, done.output
    assert answer(done)["done"] is True and answer(done)["models"][0]["version"] == "2.0.0"

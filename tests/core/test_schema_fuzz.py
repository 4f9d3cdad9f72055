"""The REST API answers what its OpenAPI schema says, and never a 5xx: Schemathesis fuzzes every operation.

Every phase (examples, coverage, fuzzing, and the stateful phase that follows
the links between operations) and every check Schemathesis has run against a
live server on the test database, seeded with a site, an enrolled device and
a published model version. Both runs are in ``make chaos`` (two minutes
and more each on two cores): one with the seed and example count fixed, so a
failure fails the same way on every run, and one with eight times the
examples and a new seed each time, printed. The assertion
message carries each failure with its response and a curl line to reproduce it.
"""

from __future__ import annotations

import os
import time
from typing import Any

import pytest
import schemathesis
from django.contrib.auth import get_user_model
from django.db import connection
from rest_framework.test import APIClient
from schemathesis.config import SchemathesisConfig
from schemathesis.engine import Status, events, from_schema

from core import services as core_services
from core.models import ApiToken
from fleet.models import Site
from tests.registry.conftest import make_classifier, make_png_images, metadata_for
from tests.registry.helpers import publish

# The server runs in another thread and the fuzz in more: their data must be committed.
pytestmark = pytest.mark.django_db(transaction=True)

# Examples per operation and phase: `make test` runs 12 (every operation's coverage phase, the
# stateful links, a short fuzz), `make chaos` 100 with a new seed each run, printed. Raise either, or
# change the seed, to search harder; `make test` keeps both fixed so a run fails the same way every time.
EXAMPLES = int(os.environ.get("EDGEFLEET_FUZZ_EXAMPLES", "12"))
SEED = int(os.environ.get("EDGEFLEET_FUZZ_SEED", "20261205"))
DEEP_EXAMPLES = int(os.environ.get("EDGEFLEET_DEEP_FUZZ_EXAMPLES", "100"))

# positive_data_acceptance expects any request the schema calls valid to succeed (or answer 401, 403, 404,
# 409, 429). These operations also refuse a valid-looking request with a documented 400 for a reason
# that depends on stored state or on several fields together, which a schema cannot state:
BUSINESS_RULES = {
    # A slug another site already has (400 invalid, fields.slug).
    "POST /api/v1/sites/": "slug taken",
    "PUT /api/v1/sites/{slug}/": "slug taken",
    "PATCH /api/v1/sites/{slug}/": "slug taken",
    # A name another device of the site already has (400 invalid, fields.name).
    "PUT /api/v1/devices/{device_id}/": "name taken",
    "PATCH /api/v1/devices/{device_id}/": "name taken",
    # unknown_version, no_bundle, bundle_expired, agent_too_old: what is published and what the device runs.
    "POST /api/v1/devices/{device_id}/assign-model/": "unpublished version",
    "POST /api/v1/devices/{device_id}/shadow/": "unpublished version",
    # unknown_version, invalid_alias: only a published, not deprecated version of this model.
    "PUT /api/v1/models/{name}/aliases/{alias}/": "unpublished version",
    # A user that does not exist; expires_at and expires_in_days together.
    "POST /api/v1/tokens/": "unknown user",
    # end before start, or a range longer than the resolution allows.
    "GET /api/v1/telemetry/": "bad range",
    # A plan, target or gate settings the schema states only as JSON (percents rising to 100, a target
    # matching enrolled devices, gate bounds: docs/rollouts.md), an unpublished version, an unknown template.
    "POST /api/v1/rollouts/": "plan rules",
    # The plan and gate rules as above; a name another template already has.
    "POST /api/v1/rollout-templates/": "plan rules",
    "PUT /api/v1/rollout-templates/{name}/": "plan rules",
    "PATCH /api/v1/rollout-templates/{name}/": "plan rules",
    # A scenario, plan and gates the schema states only as JSON (docs/simulator.md, docs/rollouts.md).
    "POST /api/v1/rollouts/what-if/": "scenario and plan rules",
    # Publishing needs a real ONNX graph and metadata JSON that describes it (not_onnx, bad_metadata,
    # shape_mismatch, ...): a generated multipart body never is one. tests/registry/test_publish.py
    # covers valid publishes; here the other checks still run on every generated upload.
    "POST /api/v1/models/{model_name}/versions/": "not an ONNX model",
}
POSITIVE_STATUSES = ["2xx", "3xx", "401", "403", "404", "409", "429", "5xx"]


def seed_data(user: Any) -> str:
    """A site, an enrolled device and a published version; returns an API token with every scope."""
    _, key = core_services.issue_token(actor=user, user=user, name="fuzz", scopes=list(ApiToken.SCOPES))
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")
    site = Site.objects.create(slug="plant-a", name="Plant A")
    token = client.post(f"/api/v1/sites/{site.slug}/enrollment-tokens/", {}, format="json").json()["token"]
    enrolled = client.post("/api/v1/enroll", {"token": token, "name": "cam-1", "site": site.slug}, format="json")
    assert enrolled.status_code == 201, enrolled.content
    published = publish(client, make_classifier(), metadata_for(), images=make_png_images())
    assert published.status_code == 201, published.content
    return key


def token_provider(user: Any, key: str) -> type:
    """Auth that outlives the fuzz revoking its own token (POST /tokens/{id}/revoke/ is fuzzed too)."""
    state = {"key": key}

    class FuzzToken:
        def get(self, case: Any, context: Any) -> str:
            usable = ApiToken.objects.filter(prefix=state["key"][:10], revoked_at__isnull=True).exists()
            if not usable:
                _, state["key"] = core_services.issue_token(
                    actor=user, user=user, name="fuzz", scopes=list(ApiToken.SCOPES)
                )
            # This runs in a fuzz thread: leave no connection behind to hold the test database open.
            connection.close()
            return state["key"]

        def set(self, case: Any, data: str, context: Any) -> None:
            case.headers = {**(case.headers or {}), "Authorization": f"Bearer {data}"}

    return FuzzToken


def fuzz_config(examples: int, seed: int) -> SchemathesisConfig:
    return SchemathesisConfig.from_dict(
        {
            "seed": seed,
            # No state carried over from an earlier run (.schemathesis/): each run is the same run.
            "cache": {"enabled": False},
            "workers": 1,
            # The live server then closes each request's database connection at once, so none is
            # left open to hold the test database when pytest drops it.
            "headers": {"Connection": "close"},
            "generation": {"max-examples": examples, "deterministic": True, "database": "none"},
            "operations": [
                {
                    "include-name": name,
                    "checks": {"positive_data_acceptance": {"expected-statuses": [*POSITIVE_STATUSES, 400]}},
                }
                for name in BUSINESS_RULES
            ],
        }
    )


def describe(name: str, failure: Any, interaction: Any, code_sample: str) -> str:
    answer = ""
    if interaction is not None and interaction.response is not None:
        answer = f"\n  answered {interaction.response.status_code}: {interaction.response.content[:400]!r}"
    return f"{name} on {failure.operation}: {failure.title}\n  {failure.message[:600]}{answer}\n  {code_sample[:800]}"


def run_fuzz(url: str, provider: type, examples: int, seed: int) -> tuple[list[str], dict[str, int], dict[str, float]]:
    schema = schemathesis.openapi.from_url(url, config=fuzz_config(examples, seed))
    schema.auth(refresh_interval=5)(provider)
    failures: list[str] = []
    requests: dict[str, int] = {}
    started: dict[str, float] = {}
    seconds: dict[str, float] = {}
    for event in from_schema(schema).execute():
        if isinstance(event, events.PhaseStarted):
            started[event.phase.name.value] = event.timestamp
        elif isinstance(event, events.PhaseFinished) and event.phase.name.value in started:
            seconds[event.phase.name.value] = round(event.timestamp - started[event.phase.name.value], 1)
        elif isinstance(event, events.ScenarioFinished):
            requests[event.phase.value] = requests.get(event.phase.value, 0) + len(event.recorder.interactions)
            for case_id, checks in event.recorder.checks.items():
                for check in checks:
                    if check.status == Status.FAILURE and check.failure_info is not None:
                        failure = check.failure_info.failure
                        interaction = event.recorder.interactions.get(failure.case_id or case_id)
                        failures.append(describe(check.name, failure, interaction, check.failure_info.code_sample))
        elif isinstance(event, events.NonFatalError):
            failures.append(f"error in {event.label}: {event.value!r}")
        elif isinstance(event, events.FatalError):
            raise event.exception
    return failures, requests, seconds


def fuzz(live_server: Any, examples: int, seed: int) -> None:
    user = get_user_model().objects.create_user("fuzz", is_staff=True, is_superuser=True)
    key = seed_data(user)
    url = f"{live_server.url}/api/v1/schema/?format=json"
    failures, requests, seconds = run_fuzz(url, token_provider(user, key), examples, seed)
    ran = f"seed {seed}, {examples} examples: requests per phase {requests}, seconds {seconds}"
    # Every phase ran, the stateful one included (it needs the links between operations).
    assert {"coverage", "fuzzing", "stateful"} <= {phase for phase, count in requests.items() if count}, ran
    unique = list(dict.fromkeys(failures))
    assert not unique, f"{len(unique)} failures ({ran}):\n\n" + "\n\n".join(unique)


# Two minutes and more on two cores, most of it the coverage phase, and it grows with the API: in make chaos
# beside the deeper run, so make test stays under its 15 minutes.
@pytest.mark.chaos
@pytest.mark.timeout(600)
def test_every_operation_answers_what_the_schema_says(live_server: Any) -> None:
    fuzz(live_server, EXAMPLES, SEED)


@pytest.mark.chaos
@pytest.mark.timeout(3600)
def test_every_operation_answers_what_the_schema_says_under_a_deeper_fuzz(live_server: Any) -> None:
    seed = int(os.environ.get("EDGEFLEET_FUZZ_SEED") or time.time())
    print(f"schema fuzz seed {seed} (EDGEFLEET_FUZZ_SEED={seed} reruns it)")
    fuzz(live_server, DEEP_EXAMPLES, seed)

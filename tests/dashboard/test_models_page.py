"""The models page: versions with who published them and from what, aliases, variants, signatures and history."""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from core.models import AuditLog
from registry.models import Bundle, Model, ModelVersion, SigningKey
from tests.dashboard.fixtures import registry_model

pytestmark = pytest.mark.django_db


def body_of(client: Client, **params: Any) -> str:
    response = client.get("/models/", params)
    assert response.status_code == 200
    return response.content.decode()


def published(model: Model, admin_user: Any) -> None:
    """The audit trail a publish, an INT8 build, an alias move and a deprecation leave."""
    versions = list(model.versions.order_by("sequence"))
    first, newest = versions[0], versions[-1]
    for version in versions:
        AuditLog.record(actor=admin_user, action="model_version.publish", target=version, version=version.version)
    AuditLog.record(actor=None, action="bundle.quantize", target=newest, target_bundle="cpu-int8")
    AuditLog.record(actor=admin_user, action="alias.set", target=model, alias="production", version=newest.version)
    first.deprecate("mislabels scratches")
    AuditLog.record(actor=admin_user, action="model_version.deprecate", target=first, reason="mislabels scratches")


def version_block(body: str, name: str) -> str:
    return re.search(rf'<article class="model-version" data-version="{name}".*?</article>', body, re.S).group(0)


def test_each_version_shows_its_publisher_provenance_metrics_variants_and_signatures(
    viewer_client: Client, admin_user: Any
) -> None:
    model = registry_model("detector", versions=2)
    newest = model.versions.get(version="1.1.0")
    ModelVersion.objects.filter(pk=newest.pk).update(
        published_by=admin_user,
        provenance={"git_commit": "abc1234", "ci_run": "https://ci.example/run/7"},
        metrics={"map50": 0.8125},
    )
    Bundle.objects.filter(version=newest, target="cpu-int8").update(
        metrics={
            "latency_ratio": 0.62,
            "int8_latency_ms": 3.1,
            "fp32_latency_ms": 5.0,
            "size_ratio": 0.29,
            "detection_agreement": 0.94,
        }
    )
    SigningKey.objects.create(key_id="k1", public_key="x" * 44, retired_at=timezone.now())

    block = version_block(body_of(viewer_client), "detector@1.1.0")

    assert 'data-testid="version-alias">production<' in block
    assert re.search(r'data-testid="published"><time[^>]*>[^<]+</time> by alice<', block)
    assert 'Commit <span class="mono">abc1234</span>' in block and "https://ci.example/run/7" in block
    assert "map50 0.8125" in block
    int8 = re.search(r'<tr data-bundle="detector@1.1.0/cpu-int8">.*?</tr>', block, re.S).group(0)
    assert "1.2\xa0MB" in int8 and "29 % of FP32" in int8 and "0.62\N{MULTIPLICATION SIGN}" in int8
    assert "3.1 vs 5.0 ms" in int8 and "94 % <span" in int8
    assert '<span class="mono">k1</span> <span class="badge fallback">retired' in int8
    fp32 = re.search(r'<tr data-bundle="detector@1.1.0/cpu-fp32">.*?</tr>', block, re.S).group(0)
    assert fp32.count(">reference<") == 2


def test_a_version_without_figures_says_so_rather_than_none(viewer_client: Client) -> None:
    registry_model("detector")
    body = body_of(viewer_client)
    block = version_block(body, "detector@1.0.0")
    assert "by an unknown publisher" in block and block.count("none recorded") == 2
    assert "unknown key" in block and "None" not in body


def test_the_history_comes_from_the_audit_log_newest_first(viewer_client: Client, admin_user: Any) -> None:
    model = registry_model("detector", versions=2)
    published(model, admin_user)

    body = body_of(viewer_client)

    entries = re.findall(r'<li data-testid="history-entry">(.*?)</li>', body, re.S)
    words = [re.sub(r"<[^>]+>", "", entry).split(" ", 2)[2] for entry in entries]
    assert words == [
        "deprecated 1.0.0 by alice: mislabels scratches",
        "alias set production → 1.1.0 by alice",
        "INT8 variant built 1.1.0 by system",
        "published 1.1.0 by alice",
        "published 1.0.0 by alice",
    ]
    # A publish by a token's user is named from the audit log when the version row has no publisher.
    assert re.search(
        r'data-testid="published"><time[^>]*>[^<]+</time> by alice<', version_block(body, "detector@1.0.0")
    )
    assert 'data-testid="deprecated"' in version_block(body, "detector@1.0.0")


def test_an_admin_gets_a_start_rollout_link_per_rollable_version(admin_client: Client, admin_user: Any) -> None:
    model = registry_model("detector", versions=2)
    published(model, admin_user)
    newest = model.versions.order_by("sequence").last()

    body = body_of(admin_client)

    link = f'href="/rollouts/new/?version={newest.pk}" data-testid="start-rollout"'
    assert link in version_block(body, "detector@1.1.0")
    assert "start-rollout" not in version_block(body, "detector@1.0.0")
    assert "not rollable: deprecated" in version_block(body, "detector@1.0.0")


def test_a_version_without_a_float_bundle_cannot_be_rolled_out(admin_client: Client) -> None:
    model = registry_model("detector")
    Bundle.objects.filter(version__model=model, target="cpu-fp32").delete()
    assert "not rollable: no cpu-fp32 bundle" in body_of(admin_client)


def test_a_viewer_gets_no_start_rollout_link(viewer_client: Client) -> None:
    registry_model("detector", versions=2)
    body = body_of(viewer_client)
    assert "start-rollout" not in body and "not rollable" not in body


def test_an_empty_registry_says_how_models_arrive(viewer_client: Client) -> None:
    assert "No models. CI publishes them with" in body_of(viewer_client)


def count(client: Client) -> int:
    with CaptureQueriesContext(connection) as queries:
        assert client.get("/models/").status_code == 200
    return len(queries)


def test_the_query_count_is_the_same_for_a_small_and_a_large_registry(admin_client: Client, admin_user: Any) -> None:
    published(registry_model("first", versions=2), admin_user)
    SigningKey.objects.create(key_id="k1", public_key="x" * 44)
    few = count(admin_client)
    for name, versions in (("second", 4), ("third", 3)):
        model = registry_model(name, versions=versions)
        published(model, admin_user)
        ModelVersion.objects.filter(model=model).update(published_by=admin_user, provenance={"git_commit": "abc"})
    assert count(admin_client) == few

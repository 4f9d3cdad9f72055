"""The rollout pages: the list, one rollout with its actions and live part, and starting a rollout of a version.

Users: an admin (alice), a viewer (victor), an operator of plant-a only (olga)
and an operator of both sites (otto). The rollouts here reach both sites.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from core.models import AuditLog
from fleet import access
from fleet.models import Device, Site
from registry.models import ModelVersion
from rollouts import services
from rollouts.models import GateResult, Rollout, RolloutDevice, RolloutStage, RolloutTemplate
from tests.dashboard.fixtures import registry_model

pytestmark = pytest.mark.django_db

PLAN = {"stages": [{"kind": "count", "value": 1}, {"kind": "percent", "value": 100, "requires_approval": True}]}


def operator(name: str, *sites: Site) -> Client:
    user = get_user_model().objects.create_user(name, password=f"pw-{name}-123")
    access.set_role(actor=None, user=user, kind="operator", sites=sites)
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def cameras(site: Site, other_site: Site, enroll_device: Callable[..., Any]) -> list[Device]:
    return [enroll_device(site if i < 3 else other_site, name=f"cam-{i}").device for i in range(5)]


@pytest.fixture
def version(db: None) -> ModelVersion:
    return ModelVersion.objects.filter(model=registry_model("detector", versions=2)).order_by("sequence").last()


def start(version: ModelVersion, sites: list[str], plan: dict[str, Any] = PLAN) -> Rollout:
    return services.create(version=version, target={"sites": sites}, plan=plan, actor="ci", reason="release")


@pytest.fixture
def rollout(version: ModelVersion, cameras: list[Device]) -> Rollout:
    """Running: its canary installed and judged (one gate passed, two abstained), its second stage waiting."""
    rollout = start(version, ["plant-a", "plant-b"])
    Rollout.objects.filter(pk=rollout.pk).update(state=Rollout.RUNNING, current_stage=0)
    canary = rollout.stages.get(index=0)
    RolloutStage.objects.filter(pk=canary.pk).update(state=RolloutStage.SOAKING)
    RolloutDevice.objects.filter(rollout=rollout, stage_index=0).update(state=RolloutDevice.ACTIVE)
    GateResult.objects.create(stage=canary, gate="latency_p95_ms_regression", value=0.05, threshold=0.2, verdict="pass")
    GateResult.objects.create(
        stage=canary,
        gate="class_mix_shift",
        value=None,
        threshold=0.25,
        verdict="pending",
        details={"frames_baseline": 120, "frames_current": 80, "min_frames": 200},
    )
    GateResult.objects.create(
        stage=canary,
        gate="canary_analysis",
        value=0.0,
        threshold=95.0,
        verdict="pending",
        details={"analysis": "insufficient", "detail": "fewer than 50 samples on a side for: latency"},
    )
    rollout.refresh_from_db()
    return rollout


def get(client: Client, path: str, **params: Any) -> tuple[int, str]:
    response = client.get(path, params)
    return response.status_code, response.content.decode()


def page_of(rollout: Rollout) -> str:
    return f"/rollouts/{rollout.pk}/"


# --- the list --------------------------------------------------------------------------------


def test_the_list_shows_each_rollouts_version_state_stage_progress_and_times(
    viewer_client: Client, rollout: Rollout
) -> None:
    status, body = get(viewer_client, "/rollouts/")

    assert status == 200
    row = re.search(rf'<tr data-rollout="{rollout.pk}">(.*?)</tr>', body, re.S).group(1)
    assert f'href="/rollouts/{rollout.pk}/"' in row and "detector" in row and "1.1.0" in row
    assert 'data-testid="rollout-state">running<' in row
    assert 'data-testid="rollout-stage">0 of 0\N{EN DASH}1 <span class="muted">soaking</span>' in row
    assert "1 active of 5" in row and "not yet" in row
    assert "None" not in body


def test_the_list_filters_by_state_model_and_site(
    viewer_client: Client, rollout: Rollout, version: ModelVersion, enroll_device: Callable[..., Any]
) -> None:
    third = Site.objects.create(slug="plant-c", name="Plant C")
    enroll_device(third, name="cam-c")
    elsewhere = start(version, ["plant-c"])

    def listed(**params: Any) -> list[str]:
        status, body = get(viewer_client, "/rollouts/", **params)
        assert status == 200
        return re.findall(r'<tr data-rollout="(\d+)">', body)

    assert listed() == [str(elsewhere.pk), str(rollout.pk)]
    assert listed(state="running") == [str(rollout.pk)]
    assert listed(site="plant-c") == [str(elsewhere.pk)]
    assert listed(model="detector", site="plant-b") == [str(rollout.pk)]
    assert listed(state="completed") == []
    assert "No rollout matches the filter." in get(viewer_client, "/rollouts/", state="completed")[1]


def test_a_bad_filter_is_a_400_that_says_why(viewer_client: Client, rollout: Rollout) -> None:
    status, body = get(viewer_client, "/rollouts/", state="exploded")
    assert status == 400 and 'data-testid="filter-error"' in body and "data-rollout=" not in body


def test_an_empty_list_says_none_yet_and_where_to_start(viewer_client: Client) -> None:
    status, body = get(viewer_client, "/rollouts/")
    assert status == 200 and "None yet." in body and 'href="/models/"' in body


def test_the_list_is_paginated(viewer_client: Client, version: ModelVersion, cameras: list[Device]) -> None:
    for _ in range(26):
        Rollout.objects.create(version=version, target={}, plan={}, state=Rollout.COMPLETED)
    first, second = get(viewer_client, "/rollouts/")[1], get(viewer_client, "/rollouts/", page=2)[1]
    assert len(re.findall(r"<tr data-rollout=", first)) == 25 and len(re.findall(r"<tr data-rollout=", second)) == 1
    assert 'data-testid="pages"' in first


def count_queries(client: Client, path: str) -> int:
    with CaptureQueriesContext(connection) as queries:
        assert client.get(path).status_code == 200
    return len(queries)


def test_the_list_query_count_does_not_grow_with_rollouts(
    admin_client: Client, version: ModelVersion, cameras: list[Device]
) -> None:
    start(version, ["plant-a"])
    few = count_queries(admin_client, "/rollouts/")
    Rollout.objects.filter(state=Rollout.PENDING).update(state=Rollout.ABORTED)
    for sites in (["plant-b"], ["plant-a", "plant-b"]):
        start(version, sites)
        Rollout.objects.filter(state=Rollout.PENDING).update(state=Rollout.COMPLETED)
    assert count_queries(admin_client, "/rollouts/") == few


# --- one rollout -----------------------------------------------------------------------------


def test_a_rollout_page_shows_stages_gates_with_their_signs_devices_and_events(
    viewer_client: Client, rollout: Rollout, cameras: list[Device]
) -> None:
    AuditLog.record(actor=None, action="rollout.stage_send", target=rollout, stage=0, held=["cam-a", "cam-b"])

    status, body = get(viewer_client, page_of(rollout))

    assert status == 200
    canary = re.search(r'<article class="card stage" data-stage="0".*?</article>', body, re.S).group(0)
    assert "Stage 0: 1 device" in canary and 'data-testid="stage-state">soaking<' in canary
    assert 'data-testid="stage-sent">1<' in canary and 'data-testid="stage-active">1<' in canary
    latency = re.search(r'<tr data-gate="latency_p95_ms_regression">.*?</tr>', canary, re.S).group(0)
    assert "5 %" in latency and "\N{LESS-THAN OR EQUAL TO} 20 %" in latency and ">pass<" in latency
    mix = re.search(r'<tr data-gate="class_mix_shift">.*?</tr>', canary, re.S).group(0)
    assert ">abstained<" in mix and "not measured" in mix and "\N{LESS-THAN OR EQUAL TO} 0.25" in mix
    assert "too few frames to judge (80 since the install, 120 before; 200 needed on each side)" in mix
    analysis = re.search(r'<tr data-gate="canary_analysis">.*?</tr>', canary, re.S).group(0)
    assert ">abstained<" in analysis and "fewer than 50 samples" in analysis
    assert "\N{GREATER-THAN OR EQUAL TO} 95 / 100" in analysis
    second = re.search(r'<article class="card stage" data-stage="1".*?</article>', body, re.S).group(0)
    assert "needs approval" in second and "No gate judged yet." in second
    for camera in cameras:
        assert f'href="/devices/{camera.device_id}/"' in body
    assert 'data-testid="event"' in body and "rollout.create" in body and "<q>release</q>" in body
    assert "held cam-a, cam-b" in body
    assert "sites: plant-a, plant-b" in body
    assert "None" not in body


def test_a_rollout_page_refreshes_its_live_part_from_a_fragment_when_it_changed(
    viewer_client: Client, rollout: Rollout
) -> None:
    body = get(viewer_client, page_of(rollout))[1]
    poll = re.search(r'hx-get="(/rollouts/\d+/progress/\?actions=pause,abort&amp;seen=(\w+))"', body)
    assert poll and 'hx-trigger="every 5s"' in body
    url, seen = poll.group(1).replace("&amp;", "&"), poll.group(2)

    unchanged = viewer_client.get(url)
    assert unchanged.status_code == 204 and "HX-Refresh" not in unchanged.headers

    RolloutDevice.objects.filter(rollout=rollout, stage_index=1).update(state=RolloutDevice.ASSIGNED)
    changed = viewer_client.get(url)

    fragment = changed.content.decode()
    assert changed.status_code == 200 and "<html" not in fragment
    assert fragment.startswith('<div id="rollout-live"') and 'data-stage="1"' in fragment
    assert "installing <b>4</b>" in fragment and f"seen={seen}" not in fragment


def test_the_fragment_reloads_the_page_when_the_actions_on_offer_changed(
    viewer_client: Client, rollout: Rollout
) -> None:
    services.pause(rollout, actor=None, reason="night")
    response = viewer_client.get(f"/rollouts/{rollout.pk}/progress/", {"actions": "pause,abort"})
    assert response.headers["HX-Refresh"] == "true"


def test_a_finished_rollout_stops_polling(viewer_client: Client, rollout: Rollout) -> None:
    services.abort(rollout, actor=None, reason="done with it")
    body = get(viewer_client, page_of(rollout))[1]
    assert "hx-trigger" not in body and 'data-testid="rollout-state">aborted<' in body
    assert 'data-testid="actions"' not in body


def test_the_rollout_page_query_count_does_not_grow_with_stages_devices_and_gates(
    admin_client: Client, version: ModelVersion, cameras: list[Device], site: Site, enroll_device: Callable[..., Any]
) -> None:
    small = start(version, ["plant-a"], {"stages": [{"kind": "percent", "value": 100}]})
    few = count_queries(admin_client, page_of(small))
    Rollout.objects.filter(pk=small.pk).update(state=Rollout.ABORTED)
    for i in range(4):
        enroll_device(site, name=f"more-{i}")
    plan = {"stages": [{"kind": "count", "value": 1}, {"kind": "count", "value": 2}, {"kind": "percent", "value": 100}]}
    large = start(version, ["plant-a", "plant-b"], plan)
    for stage in large.stages.all():
        GateResult.objects.create(stage=stage, gate="activation", value=1, threshold=1, verdict="pass")
        GateResult.objects.create(stage=stage, gate="drift", value=0.1, threshold=0.25, verdict="pass")
    services.pause(large, actor=None, reason="look")
    assert count_queries(admin_client, page_of(large)) == few


def test_the_devices_of_a_rollout_are_paginated(
    viewer_client: Client, version: ModelVersion, site: Site, enroll_device: Callable[..., Any]
) -> None:
    for i in range(51):
        enroll_device(site, name=f"cam-{i:02d}")
    rollout = start(version, ["plant-a"])
    first = get(viewer_client, page_of(rollout))[1]
    second = get(viewer_client, page_of(rollout), page=2)[1]
    assert first.count("<tr data-device=") == 50 and second.count("<tr data-device=") == 1


def test_an_unknown_rollout_is_404(viewer_client: Client) -> None:
    assert viewer_client.get("/rollouts/999999/").status_code == 404
    assert viewer_client.get("/rollouts/999999/progress/").status_code == 404


# --- actions and who may take them -------------------------------------------------------------


def test_a_viewer_gets_no_buttons_and_a_forged_post_is_refused(viewer_client: Client, rollout: Rollout) -> None:
    body = get(viewer_client, page_of(rollout))[1]
    assert 'data-testid="no-actions"' in body and "<button" not in body.split("</header>")[1]

    for verb in ("pause", "abort", "approve", "resume"):
        response = viewer_client.post(f"/rollouts/{rollout.pk}/{verb}/", {f"{verb}-reason": "I want to"})
        assert response.status_code == 403, verb

    rollout.refresh_from_db()
    assert rollout.state == Rollout.RUNNING
    assert not AuditLog.objects.filter(action__in=["rollout.pause", "rollout.abort", "rollout.approve"]).exists()


@pytest.mark.parametrize("operates", [["plant-a"], ["plant-c"]], ids=["one-of-its-sites", "another-site"])
def test_an_operator_of_not_every_site_it_reaches_may_not_act(rollout: Rollout, operates: list[str]) -> None:
    Site.objects.get_or_create(slug="plant-c", defaults={"name": "Plant C"})
    olga = operator("olga", *Site.objects.filter(slug__in=operates))
    body = get(olga, page_of(rollout))[1]
    assert 'data-testid="no-actions"' in body and 'data-action="pause"' not in body

    for verb in ("pause", "abort"):
        assert olga.post(f"/rollouts/{rollout.pk}/{verb}/", {f"{verb}-reason": "mine"}).status_code == 403

    rollout.refresh_from_db()
    assert rollout.state == Rollout.RUNNING and not AuditLog.objects.filter(actor_label="olga").exists()


def test_an_operator_of_every_site_it_reaches_may_pause_it(rollout: Rollout, site: Site, other_site: Site) -> None:
    otto = operator("otto", site, other_site)
    body = get(otto, page_of(rollout))[1]
    assert 'data-action="pause"' in body and 'data-action="abort"' in body and 'data-action="resume"' not in body

    response = otto.post(f"/rollouts/{rollout.pk}/pause/", {"pause-reason": "line 3 stops"}, follow=True)

    assert response.redirect_chain == [(page_of(rollout), 302)]
    rollout.refresh_from_db()
    assert rollout.state == Rollout.PAUSED
    audit = AuditLog.objects.get(action="rollout.pause")
    assert (audit.actor_label, audit.reason, audit.target_id) == ("otto", "line 3 stops", str(rollout.pk))


def test_an_admin_pauses_resumes_and_aborts_and_each_is_audited(admin_client: Client, rollout: Rollout) -> None:
    response = admin_client.post(f"/rollouts/{rollout.pk}/pause/", {"pause-reason": "night shift"}, follow=True)
    body = response.content.decode()
    assert f"Rollout #{rollout.pk} paused." in body and 'data-action="resume"' in body

    admin_client.post(f"/rollouts/{rollout.pk}/resume/", {"resume-reason": ""})
    rollout.refresh_from_db()
    assert rollout.state == Rollout.RUNNING

    admin_client.post(f"/rollouts/{rollout.pk}/abort/", {"abort-reason": "wrong build"})
    rollout.refresh_from_db()
    assert rollout.state == Rollout.ABORTED
    done = list(AuditLog.objects.filter(target_id=str(rollout.pk), actor_label="alice").values_list("action", "reason"))
    assert sorted(done) == [("rollout.abort", "wrong build"), ("rollout.pause", "night shift"), ("rollout.resume", "")]


def test_pause_and_abort_need_a_reason(admin_client: Client, rollout: Rollout) -> None:
    for verb in ("pause", "abort"):
        response = admin_client.post(f"/rollouts/{rollout.pk}/{verb}/", {f"{verb}-reason": "  "})
        assert response.status_code == 400 and 'data-testid="reason-error"' in response.content.decode()
    rollout.refresh_from_db()
    assert rollout.state == Rollout.RUNNING


def test_an_admin_approves_the_stage_that_waits_for_a_person(admin_client: Client, rollout: Rollout) -> None:
    RolloutStage.objects.filter(rollout=rollout, index=0).update(state=RolloutStage.PASSED, verdict="pass")
    Rollout.objects.filter(pk=rollout.pk).update(current_stage=1)
    RolloutStage.objects.filter(rollout=rollout, index=1).update(state=RolloutStage.WAITING_APPROVAL)
    body = get(admin_client, page_of(rollout))[1]
    assert 'data-action="approve"' in body and "waiting for approval" in body

    admin_client.post(f"/rollouts/{rollout.pk}/approve/", {"approve-reason": "canary looks fine"})

    stage = rollout.stages.get(index=1)
    assert stage.approved_by.username == "alice" and stage.approved_at is not None
    audit = AuditLog.objects.get(action="rollout.approve")
    assert (audit.actor_label, audit.reason, audit.data["stage"]) == ("alice", "canary looks fine", 1)


def test_a_refused_action_shows_the_services_reason(admin_client: Client, rollout: Rollout) -> None:
    response = admin_client.post(f"/rollouts/{rollout.pk}/resume/", {"resume-reason": ""}, follow=True)
    body = response.content.decode()
    assert 'class="message error"' in body and "Only a paused or halted rollout resumes; this one is running." in body


def test_an_action_needs_the_csrf_token(admin_user: Any, rollout: Rollout) -> None:
    client = Client(enforce_csrf_checks=True)
    client.force_login(admin_user)
    assert client.post(f"/rollouts/{rollout.pk}/pause/", {"pause-reason": "x"}).status_code == 403
    rollout.refresh_from_db()
    assert rollout.state == Rollout.RUNNING


def test_an_unknown_action_is_404_and_a_get_is_405(admin_client: Client, rollout: Rollout) -> None:
    assert admin_client.post(f"/rollouts/{rollout.pk}/explode/").status_code == 404
    assert admin_client.get(f"/rollouts/{rollout.pk}/pause/").status_code == 405


def test_the_site_page_links_each_rollout_to_its_page(viewer_client: Client, rollout: Rollout) -> None:
    body = get(viewer_client, "/sites/plant-a/")[1]
    assert f'<a href="/rollouts/{rollout.pk}/">#{rollout.pk}</a>' in body


# --- starting one ----------------------------------------------------------------------------


def new(version: ModelVersion) -> str:
    return f"/rollouts/new/?version={version.pk}"


def test_a_viewer_may_not_start_a_rollout_and_an_operator_only_at_their_own_sites(
    viewer_client: Client, version: ModelVersion, site: Site, other_site: Site, cameras: list[Device]
) -> None:
    form = {"version": version.pk, "plan": '{"stages": [{"kind": "percent", "value": 100}]}', "target": "running"}
    assert viewer_client.get(new(version)).status_code == 403
    assert viewer_client.post("/rollouts/new/", form).status_code == 403
    otto = operator("otto", site)
    assert otto.get(new(version)).status_code == 200

    everywhere = otto.post("/rollouts/new/", {**form, "target": "sites", "sites": [site.slug, other_site.slug]})

    assert everywhere.status_code == 403 and "otto may not start a rollout at plant-b" in everywhere.content.decode()
    assert not Rollout.objects.exists()
    mine = otto.post("/rollouts/new/", {**form, "target": "sites", "sites": [site.slug]})
    assert mine.status_code == 302 and Rollout.objects.get().created_by.username == "otto"


def test_an_admin_starts_a_rollout_from_a_template_at_chosen_sites(
    admin_client: Client, version: ModelVersion, cameras: list[Device]
) -> None:
    RolloutTemplate.objects.create(name="canary-then-all", plan=PLAN, gate_defaults={"soak_s": 60})
    body = get(admin_client, new(version))[1]
    assert "Roll out detector" in body and ">canary-then-all: 1 device, 100 %<" in body and "Plant B" in body

    response = admin_client.post(
        "/rollouts/new/",
        {
            "version": version.pk,
            "template": "canary-then-all",
            "target": "sites",
            "sites": ["plant-b"],
            "reason": "fix",
        },
    )

    rollout = Rollout.objects.get()
    assert response.status_code == 302 and response["Location"] == page_of(rollout)
    assert rollout.template.name == "canary-then-all" and rollout.target == {"sites": ["plant-b"]}
    assert set(rollout.devices.values_list("device__site__slug", flat=True)) == {"plant-b"}
    audit = AuditLog.objects.get(action="rollout.create")
    assert (audit.actor_label, audit.reason, audit.data["template"]) == ("alice", "fix", "canary-then-all")


def test_an_admin_starts_one_with_a_custom_plan_to_every_device_running_the_model(
    admin_client: Client, version: ModelVersion, cameras: list[Device]
) -> None:
    Device.objects.update(reported={"model_name": "detector", "model_version": "1.0.0"})
    plan = '{"stages": [{"kind": "count", "value": 2}, {"kind": "percent", "value": 100}]}'
    response = admin_client.post(
        "/rollouts/new/", {"version": version.pk, "plan": plan, "target": "running", "gates": '{"soak_s": 900}'}
    )
    rollout = Rollout.objects.get()
    assert response.status_code == 302
    assert rollout.target == {"running_model": "detector"} and rollout.gate_overrides == {"soak_s": 900}
    assert rollout.devices.count() == 5 and rollout.stages.count() == 2


def test_the_start_form_reports_the_services_refusals_on_their_fields(
    admin_client: Client, version: ModelVersion, cameras: list[Device]
) -> None:
    bad_plan = admin_client.post(
        "/rollouts/new/",
        {"version": version.pk, "plan": '{"stages": [{"kind": "count", "value": 1}]}', "target": "running"},
    )
    assert bad_plan.status_code == 400
    assert 'data-testid="plan-error"' in bad_plan.content.decode() and "percent 100" in bad_plan.content.decode()

    nobody = admin_client.post(
        "/rollouts/new/",
        {"version": version.pk, "plan": '{"stages": [{"kind": "percent", "value": 100}]}', "target": "running"},
    )
    assert nobody.status_code == 400 and "No enrolled device matches the target." in nobody.content.decode()

    no_sites = admin_client.post("/rollouts/new/", {"version": version.pk, "plan": "{", "target": "sites"})
    body = no_sites.content.decode()
    assert no_sites.status_code == 400 and "Choose at least one site." in body and "Not JSON" in body
    assert not Rollout.objects.exists()


def test_a_deprecated_version_is_refused_with_the_services_reason(
    admin_client: Client, version: ModelVersion, cameras: list[Device]
) -> None:
    version.deprecate("bad labels")
    response = admin_client.post(
        "/rollouts/new/",
        {
            "version": version.pk,
            "plan": '{"stages": [{"kind": "percent", "value": 100}]}',
            "target": "sites",
            "sites": ["plant-a"],
        },
    )
    assert response.status_code == 409 and "is deprecated and cannot be rolled out" in response.content.decode()


def test_the_start_form_without_a_version_points_to_the_models_page(admin_client: Client) -> None:
    status, body = get(admin_client, "/rollouts/new/")
    assert status == 400 and 'data-testid="no-version"' in body and 'href="/models/"' in body
    assert admin_client.get("/rollouts/new/?version=999999").status_code == 404

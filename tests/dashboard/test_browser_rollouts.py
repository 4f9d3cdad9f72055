"""A rollout started from the models page in headless Chromium, watched live while the scheduler moves it.

The fleet is ten devices on version 1.0.0 of a small published classifier
(tests.rollouts.conftest); the test ticks the scheduler itself, the devices
answering as the rollout tests' ``drive`` makes them, and the page must follow
each step by its own polling: no reloads by the test, no sleeps.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

import pytest

from fleet.models import Device
from registry.models import ModelVersion
from rollouts import scheduler
from rollouts.models import Rollout, RolloutTemplate
from tests.dashboard.conftest import accessibility_problems, overflows_at, require_browser, sign_in
from tests.rollouts.conftest import fleet_on_v1, versions  # noqa: F401 (fixtures)
from tests.rollouts.helpers import GATES, PLAN, drive

pytestmark = pytest.mark.browser

expect = require_browser().expect

# Live parts poll every second in the browser tests (the page fixture): a step shows well within this.
LIVE_MS = 15_000


def words(state: str) -> str:
    return "waiting for approval" if state == "waiting_approval" else state.replace("_", " ")


def test_a_rollout_started_from_the_models_page_is_watched_through_its_stages(
    page: Any,
    admin_user: Any,
    versions: tuple[ModelVersion, ModelVersion],  # noqa: F811
    fleet_on_v1: list[Device],  # noqa: F811
    screenshot: Callable[[str], None],
) -> None:
    v1, v2 = versions
    RolloutTemplate.objects.create(
        name="canary-ten-all", description="1 device, 10 %, all", plan=PLAN, gate_defaults=GATES
    )
    sign_in(page, "alice", "pw-alice-123", path="/models/")
    assert accessibility_problems(page) == []
    assert overflows_at(page, 390) == 0

    page.get_by_role("link", name="Start rollout of parts 2.0.0").click()
    page.wait_for_url(f"**/rollouts/new/?version={v2.pk}")
    page.get_by_label("Template").select_option("canary-ten-all")
    expect(page.get_by_label("Every device running parts, at every site")).to_be_checked()
    page.get_by_label("Reason (optional, kept in the audit log)").fill("release 2.0.0")
    assert accessibility_problems(page) == []
    page.get_by_role("button", name="Start rollout").click()

    page.wait_for_url("**/rollouts/*/")
    rollout = Rollout.objects.get()
    assert page.url.endswith(f"/rollouts/{rollout.pk}/")
    expect(page.get_by_test_id("messages")).to_contain_text(f"Rollout #{rollout.pk} of parts:2.0.0 created")
    expect(page.get_by_test_id("rollout-state")).to_have_text("pending")
    expect(page.locator("article[data-stage]")).to_have_count(3)

    # A person's pause and resume, through the page's forms.
    page.get_by_label("Reason to pause (required)").fill("wait for the night shift")
    page.get_by_role("button", name="Pause").click()
    expect(page.get_by_test_id("messages")).to_contain_text(f"Rollout #{rollout.pk} paused.")
    expect(page.get_by_test_id("rollout-state")).to_have_text("paused")
    page.get_by_role("button", name="Resume").click()
    expect(page.get_by_test_id("rollout-state")).to_have_text("running")

    seen: list[tuple[str, ...]] = []

    def tick_and_watch(at: datetime) -> None:
        scheduler.tick(now=at)
        row = Rollout.objects.get(pk=rollout.pk)
        stages = tuple(row.stages.order_by("index").values_list("state", flat=True))
        if seen and seen[-1] == (row.state, *stages):
            return
        seen.append((row.state, *stages))
        expect(page.get_by_test_id("rollout-state")).to_have_text(row.state, timeout=LIVE_MS)
        for index, state in enumerate(stages):
            stage = page.locator(f'article[data-stage="{index}"] [data-testid=stage-state]')
            expect(stage).to_have_text(words(state), timeout=LIVE_MS)

    drive(rollout, v1, v2, ticker=tick_and_watch)

    rollout.refresh_from_db()
    assert rollout.state == Rollout.COMPLETED, rollout.halt_reason
    # The page saw the canary install, soak and pass before the next stage began.
    assert ("running", "installing", "pending", "pending") in seen
    assert ("running", "passed", "soaking", "pending") in seen
    assert seen[-1] == ("completed", "passed", "passed", "passed")
    expect(page.get_by_test_id("rollout-state")).to_have_text("completed")
    expect(page.locator('article[data-stage="2"] [data-testid=stage-active]')).to_have_text("8")
    gate = page.locator('article[data-stage="0"] tr[data-gate="latency_p95_ms_regression"]').first
    expect(gate.get_by_test_id("gate-threshold")).to_have_text("\N{LESS-THAN OR EQUAL TO} 20 %")
    expect(page.locator('article[data-stage="0"] tr[data-gate="canary_analysis"]').first).to_contain_text("abstained")
    expect(page.get_by_test_id("actions")).to_have_count(0)
    screenshot("rollout")
    assert accessibility_problems(page) == []
    assert overflows_at(page, 390) == 0

    page.get_by_role("link", name="Rollouts", exact=True).first.click()
    row = page.locator(f'tr[data-rollout="{rollout.pk}"]')
    expect(row.get_by_test_id("rollout-state")).to_have_text("completed")
    expect(row.get_by_test_id("rollout-progress")).to_contain_text("10 active of 10")
    screenshot("rollouts")
    assert accessibility_problems(page) == []
    assert overflows_at(page, 390) == 0

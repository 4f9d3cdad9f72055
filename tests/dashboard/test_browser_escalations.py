"""The escalations pages in headless Chromium: reviewing by keyboard, the advisor's chart, axe and a phone's width."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from django.test import Client

from core.models import AuditLog
from escalations.models import Escalation, EscalationState
from fleet.models import Site
from tests.dashboard.conftest import accessibility_problems, overflows_at, require_browser, sign_in
from tests.dashboard.test_escalation_pages import Uploader, disagreeing, parts_model

pytestmark = pytest.mark.browser

expect = require_browser().expect


@pytest.fixture
def frames(
    site: Site, enroll_device: Callable[..., Any], monkeypatch: pytest.MonkeyPatch, settings: Any, tmp_path: Any
) -> list[Escalation]:
    """Three frames waiting for a person at plant-a (oldest first), and five the cloud agreed on."""
    settings.MEDIA_ROOT = tmp_path / "media"
    settings.CLOUD_REVIEW_BELOW_PCT = 0
    monkeypatch.setattr("escalations.tasks.answer_escalations.delay", lambda: None)
    parts_model()
    escalate = Uploader(Client(), enroll_device)
    escalate(site, [("ok", 0.55 + i / 20, "ok", 0.97) for i in range(5)])
    return escalate(site, disagreeing(3))


def test_a_reviewer_works_through_the_queue_by_keyboard(
    page: Any, frames: list[Escalation], admin_user: Any, screenshot: Callable[[str], None]
) -> None:
    oldest, middle, newest = frames
    sign_in(page, "alice", "pw-alice-123", "/escalations/")
    expect(page.locator("tr[data-escalation]")).to_have_count(3)
    expect(page.get_by_role("link", name="Escalations")).to_have_attribute("aria-current", "page")
    assert accessibility_problems(page) == []
    assert overflows_at(page, 390) == 0
    screenshot("escalations")

    page.get_by_role("link", name=newest.frame_id).click()
    page.wait_for_url(f"**/escalations/{newest.pk}/")
    image = page.get_by_role("img", name=f"Escalated frame {newest.frame_id} from cam-plant-a")
    expect(image).to_be_visible()
    assert page.evaluate("img => img.complete && img.naturalWidth", image.element_handle()) == 96
    expect(page.get_by_test_id("edge-answer")).to_contain_text("ok")
    expect(page.get_by_test_id("cloud-answer")).to_contain_text("scratch")
    page.keyboard.press("?")
    expect(page.get_by_test_id("shortcuts")).to_have_attribute("open", "")
    assert accessibility_problems(page) == []
    assert overflows_at(page, 390) == 0
    screenshot("escalation")

    # c: confirm the cloud's label; the next frame in the queue opens.
    page.keyboard.press("c")
    page.wait_for_url(f"**/escalations/{middle.pk}/")
    expect(page.get_by_test_id("messages")).to_contain_text(f"Frame {newest.frame_id} labelled scratch")
    newest.refresh_from_db()
    assert (newest.state, newest.review_label, newest.reviewed_by_id) == (
        EscalationState.REVIEWED,
        "scratch",
        admin_user.pk,
    )

    # j and k walk the queue; typing a note is not a shortcut; 1 picks the first label.
    page.keyboard.press("j")
    page.wait_for_url(f"**/escalations/{oldest.pk}/")
    page.keyboard.press("k")
    page.wait_for_url(f"**/escalations/{middle.pk}/")
    page.get_by_label("Note (optional)").fill("just a shadow")
    page.get_by_label("Note (optional)").press("e")
    assert page.url.endswith(f"/escalations/{middle.pk}/")
    page.locator("body").click(position={"x": 5, "y": 5})
    page.keyboard.press("1")
    page.wait_for_url(f"**/escalations/{oldest.pk}/")
    middle.refresh_from_db()
    assert (middle.review_label, middle.review_note) == ("ok", "just a shadowe")
    assert AuditLog.objects.filter(action="escalation.review", actor_label="alice").count() == 2


def test_the_advisor_draws_its_curve_with_the_pick_marked(
    page: Any, frames: list[Escalation], viewer_user: Any, screenshot: Callable[[str], None]
) -> None:
    sign_in(page, "victor", "pw-victor-123", "/escalations/advisor/?model=parts%401.0.0&accuracy=100")
    chart = page.get_by_test_id("advisor-chart")
    expect(chart).to_have_attribute("data-state", "ready")
    drawn = page.evaluate(
        "() => Chart.getChart(document.querySelector('canvas[data-advisor]')).data.datasets.map(d => d.data.length)"
    )
    assert drawn[0] > 8 and drawn[1] == 1
    expect(page.get_by_test_id("recommendation")).to_contain_text("Recommended threshold")
    expect(page.get_by_test_id("no-apply")).to_be_visible()
    assert accessibility_problems(page) == []
    assert overflows_at(page, 390) == 0
    screenshot("advisor")

    page.get_by_role("link", name="Dataset export").click()
    page.wait_for_url("**/escalations/export/")
    assert accessibility_problems(page) == []
    assert overflows_at(page, 390) == 0

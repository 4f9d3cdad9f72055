"""The admin pages in headless Chromium: an API token made, seen once and revoked, an alert acknowledged with a note.

Each page is checked with axe-core (no serious or critical violation) and, at
390 px wide, for content wider than the screen.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from core.models import ApiToken, AuditLog
from fleet.models import Device, Site
from telemetry.models import Alert
from tests.dashboard.conftest import accessibility_problems, overflows_at, require_browser, sign_in
from tests.dashboard.fixtures import open_alert

pytestmark = pytest.mark.browser

expect = require_browser().expect


@pytest.fixture
def alert(site: Site, enroll_device: Callable[..., Any]) -> Alert:
    return open_alert(enroll_device(site, name="cam-hot").device)


def test_an_admin_makes_an_api_token_sees_it_once_revokes_it_and_acknowledges_an_alert_with_a_note(
    page: Any, admin_user: Any, alert: Alert, other_site: Site, screenshot: Callable[[str], None]
) -> None:
    sign_in(page, "alice", "pw-alice-123", path="/tokens/")

    page.get_by_text("New API token").click()
    page.get_by_label("Name").fill("ci-publish")
    page.get_by_label("publish: publish model versions").check()
    page.get_by_label("Expires after").select_option("30")
    page.get_by_role("button", name="Create API token").click()
    secret = page.get_by_test_id("secret").input_value()
    assert secret.startswith("eft_")
    expect(page.get_by_test_id("new-secret")).to_contain_text("only time it is shown")
    token = ApiToken.objects.get(name="ci-publish")
    expect(page.locator(f'tr[data-api-token="{token.pk}"]')).to_contain_text(token.prefix)
    screenshot("tokens")
    assert accessibility_problems(page) == []

    page.goto("/tokens/")
    assert secret not in page.content()
    row = page.locator(f'tr[data-api-token="{token.pk}"]')
    row.get_by_label("Why revoke ci-publish").fill("rotated after the audit")
    row.get_by_role("button", name="Revoke ci-publish").click()
    expect(page.get_by_test_id("messages")).to_contain_text("ci-publish")
    expect(page.locator(f'tr[data-api-token="{token.pk}"]').get_by_test_id("token-state")).to_have_text("revoked")
    token.refresh_from_db()
    assert token.revoked_at is not None

    page.goto("/alerts/")
    row = page.locator(f'tr[data-alert="{alert.pk}"]')
    row.get_by_label("Note for temperature_high on cam-hot").fill("fan replaced, watching it")
    screenshot("alerts")
    assert accessibility_problems(page) == []
    row.get_by_role("button", name="Acknowledge").click()
    expect(row.get_by_test_id("alert-state")).to_have_text("acknowledged")
    expect(row.get_by_test_id("ack-note")).to_have_text("fan replaced, watching it")
    expect(row.get_by_test_id("acknowledged-by")).to_contain_text("by alice")
    alert.refresh_from_db()
    assert (alert.state, alert.acknowledged_note) == (Alert.State.ACKNOWLEDGED, "fan replaced, watching it")
    page.reload()
    expect(page.locator(f'tr[data-alert="{alert.pk}"]').get_by_test_id("ack-note")).to_have_text(
        "fan replaced, watching it"
    )

    page.goto("/audit/")
    for action in ("api_token.issue", "api_token.revoke", "alert.acknowledge"):
        expect(page.get_by_test_id("action").filter(has_text=action)).to_have_count(1)
    expect(page.get_by_test_id("reason").filter(has_text="fan replaced, watching it")).to_have_count(1)
    assert secret not in page.content()
    screenshot("audit")
    assert accessibility_problems(page) == []
    assert AuditLog.objects.filter(actor=admin_user, action="api_token.revoke").exists()

    page.goto("/users/")
    expect(page.locator('tr[data-user="alice"]').get_by_test_id("role")).to_have_text("admin")
    screenshot("users")
    assert accessibility_problems(page) == []
    page.get_by_role("link", name="Change role of alice").click()
    expect(page.get_by_role("heading", name="Change the role")).to_be_visible()
    assert accessibility_problems(page) == []


def test_the_admin_pages_fit_a_phone(
    page: Any, admin_user: Any, viewer_user: Any, alert: Alert, screenshot: Callable[[str], None]
) -> None:
    ApiToken.issue(admin_user, name="a-rather-long-token-name-for-the-nightly-publisher", scopes=["read", "publish"])
    AuditLog.record(
        actor=admin_user,
        action="device.revoke",
        target=Device.objects.get(name="cam-hot"),
        reason="stolen from the line",
        long=["x" * 80],
    )
    sign_in(page, "alice", "pw-alice-123", path="/audit/")
    page.set_viewport_size({"width": 390, "height": 844})
    pages = {"audit": "/audit/", "tokens": "/tokens/", "users": "/users/", "role": f"/users/{viewer_user.pk}/role/"}
    for name, path in {**pages, "alerts": "/alerts/"}.items():
        page.goto(path)
        assert overflows_at(page, 390) == 0, path
        assert accessibility_problems(page) == [], path
        screenshot(f"{name}-phone")


def test_a_viewer_sees_no_action_on_the_alerts_page_and_the_admin_pages_refuse_them(
    page: Any, viewer_user: Any, alert: Alert
) -> None:
    sign_in(page, "victor", "pw-victor-123", path="/alerts/")
    expect(page.locator(f'tr[data-alert="{alert.pk}"]')).to_be_visible()
    expect(page.get_by_role("button", name="Acknowledge")).to_have_count(0)
    expect(page.get_by_role("textbox", name="Note for temperature_high on cam-hot")).to_have_count(0)
    for path in ("/tokens/", "/users/"):
        assert page.goto(path).status == 403
    page.goto("/audit/")
    expect(page.get_by_test_id("audit-scope")).to_contain_text("Entries you made")
    assert accessibility_problems(page) == []

"""Roles in the browser: a viewer and an operator of another site see no rollback, and the server refuses them anyway.

The forged requests are sent from the signed-in page itself (its cookies and its
CSRF token), as a person who edits the page or replays a request would.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from django.contrib.auth import get_user_model

from core.models import AuditLog, Role
from fleet import access
from fleet.models import Device, Site
from rollouts.models import SiteRollback
from tests.dashboard.conftest import require_browser, sign_in
from tests.dashboard.fixtures import reporting, with_telemetry

pytestmark = pytest.mark.browser

expect = require_browser().expect


@pytest.fixture
def fleet(site: Site, other_site: Site, enroll_device: Callable[..., Any]) -> list[Device]:
    return [
        reporting(with_telemetry(enroll_device(site, "cam-a").device), phase="active"),
        reporting(with_telemetry(enroll_device(other_site, "cam-b").device), phase="active"),
    ]


@pytest.fixture
def operator_of_b(other_site: Site, admin_user: Any) -> Any:
    user = get_user_model().objects.create_user("otto", password="pw-otto-123")
    access.set_role(actor=admin_user, user=user, kind=Role.OPERATOR, sites=[other_site])
    return user


def forge(page: Any, url: str, **form: str) -> int:
    """POST from the page as it is, with its session cookie and CSRF token; the answer's status."""
    token = page.locator('meta[name="csrf-token"]').get_attribute("content")
    answer = page.request.post(
        url, form={"csrfmiddlewaretoken": token, **form}, headers={"X-CSRFToken": token, "Referer": page.url}
    )
    return int(answer.status)


def forge_json(page: Any, url: str, body: dict[str, Any]) -> int:
    token = page.locator('meta[name="csrf-token"]').get_attribute("content")
    answer = page.request.post(url, data=body, headers={"X-CSRFToken": token, "Referer": page.url})
    return int(answer.status)


def test_a_viewer_sees_no_action_and_a_forged_rollback_is_refused(page: Any, fleet: list[Device], viewer_user: Any):
    sign_in(page, "victor", "pw-victor-123", path="/sites/plant-a/")
    expect(page.get_by_test_id("rollback-not-allowed")).to_be_visible()
    expect(page.get_by_role("button", name="Roll back plant-a")).to_have_count(0)
    expect(page.get_by_role("textbox", name="Reason (required)")).to_have_count(0)

    assert forge(page, "/sites/plant-a/", reason="forged") == 403
    assert forge_json(page, "/api/v1/sites/plant-a/rollback/", {"reason": "forged"}) == 403
    assert not SiteRollback.objects.exists()
    assert not AuditLog.objects.filter(action="site.rollback").exists()


def test_an_operator_of_another_site_is_refused_by_the_server(
    page: Any, fleet: list[Device], operator_of_b: Any, screenshot: Callable[[str], None]
):
    sign_in(page, "otto", "pw-otto-123", path="/sites/plant-b/")
    expect(page.get_by_role("button", name="Roll back plant-b")).to_be_visible()
    page.goto("/sites/plant-a/")
    expect(page.get_by_role("heading", name="Plant A")).to_be_visible()
    expect(page.get_by_role("button", name="Roll back plant-a")).to_have_count(0)

    assert forge(page, "/sites/plant-a/", reason="not mine") == 403
    assert forge_json(page, "/api/v1/sites/plant-a/rollback/", {"reason": "not mine"}) == 403
    assert not AuditLog.objects.filter(action="site.rollback").exists()
    screenshot("site-as-operator-of-another-site")

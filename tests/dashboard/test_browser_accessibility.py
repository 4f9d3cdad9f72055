"""Every operator page, as a person with a phone, a laptop or a screen reader meets it.

axe-core (from npm) finds no serious or critical problem (contrast below 4.5:1
included), and the page fits a 390 px phone and a 1366x768 laptop without
scrolling sideways: wide tables scroll inside their own box.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from fleet.models import Device, Site
from tests.dashboard.conftest import accessibility_problems, overflows_at, require_browser, sign_in
from tests.dashboard.fixtures import open_alert, registry_model, reporting, with_event, with_telemetry

pytestmark = pytest.mark.browser

expect = require_browser().expect

PAGES = {
    "overview": "/",
    "devices": "/devices/",
    "site": "/sites/plant-a/",
    "device": "/devices/{device}/",
    "alerts": "/alerts/",
    "models": "/models/",
    "rollouts": "/rollouts/",
    "escalations": "/escalations/",
    "advisor": "/escalations/advisor/",
    "audit log": "/audit/",
    "tokens": "/tokens/",
    "users": "/users/",
}


@pytest.fixture
def fleet(site: Site, other_site: Site, enroll_device: Callable[..., Any]) -> list[Device]:
    online = reporting(with_telemetry(enroll_device(site, "cam-online").device), phase="active")
    online.record_presence(True, online.created_at)
    with_event(online, "model.swap", version="1.0.0")
    open_alert(online)
    registry_model("detector", versions=2)
    return [online, enroll_device(site, "cam-offline").device, enroll_device(other_site, "cam-b").device]


def test_every_page_has_no_serious_accessibility_problem_and_fits_a_phone_and_a_laptop(
    page: Any, fleet: list[Device], admin_user: Any
) -> None:
    sign_in(page, "alice", "pw-alice-123")
    found = {}
    for name, path in PAGES.items():
        page.goto(path.format(device=fleet[0].device_id))
        expect(page.locator("main")).to_be_visible()
        problems = accessibility_problems(page)
        wider = {width: overflows_at(page, width) for width in (390, 1366)}
        if problems or any(wider.values()):
            found[name] = (problems, wider)
    assert found == {}


def test_the_sign_in_page_is_accessible_and_fits_a_phone(page: Any) -> None:
    page.goto("/login/")
    assert accessibility_problems(page) == []
    assert overflows_at(page, 390) == 0

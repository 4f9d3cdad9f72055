"""Headless Chromium (Debian's /usr/bin/chromium) driven by Playwright against the live server.

Playwright's own browser downloads are never used: sites and CI are offline,
so the system Chromium is launched by path, with the background services that
would try to reach the network switched off.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")
ROOT = Path(__file__).resolve().parents[2]
# Every run leaves a screenshot of each main page here (DASHBOARD_SCREENSHOTS moves it), to look at.
SCREENSHOTS = Path(os.environ.get("DASHBOARD_SCREENSHOTS") or ROOT / "var" / "test-artefacts" / "screenshots")
AXE = ROOT / "node_modules" / "axe-core" / "axe.min.js"
# What blocks a person from using a page: axe-core's own two highest impacts.
BLOCKING = ("serious", "critical")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ASYNC_UNSAFE = "DJANGO_ALLOW_ASYNC_UNSAFE"


def require_browser() -> Any:
    """Skip the calling test module unless Chromium and Playwright are here; returns playwright.sync_api.

    Called at the top of each browser test module (a conftest cannot skip a module).
    """
    if not CHROMIUM.exists():
        pytest.skip(
            f"{CHROMIUM} is missing (apt-get install chromium; .ci/run does it as root)", allow_module_level=True
        )
    return pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[dev]')")


TIMEOUT_MS = 15_000


# One Chromium per module, and Playwright's event loop gone before other suites run.
@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    sync_api = require_browser()
    # Playwright's sync API keeps an event loop in this thread while it runs; the ORM
    # calls tests and fixtures make between page actions are still plain synchronous
    # calls, so Django's guard against ORM use from async code does not apply to them.
    previous = os.environ.get(ASYNC_UNSAFE)
    os.environ[ASYNC_UNSAFE] = "true"
    try:
        with sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, headless=True)
            yield browser
            browser.close()
    finally:
        if previous is None:
            os.environ.pop(ASYNC_UNSAFE, None)
        else:
            os.environ[ASYNC_UNSAFE] = previous


@pytest.fixture
def page(browser: Any, live_server: Any, transactional_db: None, settings: Any) -> Iterator[Any]:
    """A fresh browser context per test (its own cookies), failing on any script error on the page.

    Live parts refresh every second, so a test watching a change waits a second, not five.
    """
    settings.DASHBOARD_POLL_S = 1
    context = browser.new_context(base_url=live_server.url, viewport={"width": 1280, "height": 900})
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    yield page
    context.close()
    assert errors == [], f"script errors on the page: {errors}"


@pytest.fixture
def screenshot(page: Any) -> Any:
    """Save a full-page screenshot of the page as it is now, as a test artefact (``SCREENSHOTS``)."""

    def take(name: str) -> None:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)

    return take


def accessibility_problems(page: Any) -> list[str]:
    """axe-core's serious and critical findings on the page as it is now, one line each (empty: none).

    axe-core comes from npm (package.json's devDependencies), injected into the page by the test, never served.
    """
    if not AXE.exists():
        pytest.fail(f"{AXE} is missing: run `make install` (npm ci) to get axe-core")
    page.add_script_tag(path=str(AXE))
    found = page.evaluate(
        """async (blocking) => (await axe.run(document, {resultTypes: ['violations']})).violations
            .filter(v => blocking.includes(v.impact))
            .map(v => `${v.impact} ${v.id}: ${v.help} `
                + `(${v.nodes.map(n => n.target.join(' ')).slice(0, 3).join(', ')})`)""",
        list(BLOCKING),
    )
    return list(found)


def overflows_at(page: Any, width: int) -> int:
    """How many CSS pixels the page is wider than a ``width``-pixel screen (0: it fits); the viewport is put back."""
    before = page.viewport_size
    page.set_viewport_size({"width": width, "height": 844})
    try:
        return int(page.evaluate(f"document.documentElement.scrollWidth - {width}"))
    finally:
        page.set_viewport_size(before)


def sign_in(page: Any, username: str, password: str, path: str = "/") -> None:
    """Sign in through the login form the way a person does, landing on ``path``."""
    page.goto(path)
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"**{path}")

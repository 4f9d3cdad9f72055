"""Screenshots of the running demo's main pages, for the README (docs/screenshots/).

Start the demo (``make demo``, or ``make demo DEMO_FLAGS=--rollouts`` for rollouts
to look at), let it run a few minutes so telemetry and escalations arrive, then:

    .venv/bin/python -m demo.screenshots --password <the demo's login password>

Debian's Chromium is driven by Playwright (both installed by the build); each page
is found the way a person finds it, by following the first link of its kind.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from playwright.sync_api import Page, ViewportSize, sync_playwright

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
VIEWPORT: ViewportSize = {"width": 1366, "height": 900}
# name -> (where to start, the first link to follow from there, or None to stay)
PAGES: dict[str, tuple[str, str | None]] = {
    "overview": ("/", None),
    "site": ("/", "table a[href^='/sites/']"),
    "device": ("/devices/", "table a[href^='/devices/dev-']"),
    "rollouts": ("/rollouts/", None),
    "rollout": ("/rollouts/", "table a[href^='/rollouts/']"),
    "models": ("/models/", None),
    "escalations": ("/escalations/", None),
    "escalation": ("/escalations/", "table a[href^='/escalations/']"),
    "advisor": ("/escalations/advisor/", None),
    "alerts": ("/alerts/", None),
    "audit": ("/audit/", None),
    "tokens": ("/tokens/", None),
    "users": ("/users/", None),
}


def take(page: Page, server: str, out: Path, name: str, start: str, follow: str | None) -> bool:
    page.goto(server + start)
    if follow is not None:
        link = page.locator(follow).first
        if link.count() == 0:
            print(f"  {name}: skipped, no {follow} on {start}")
            return False
        link.click()
    page.wait_for_load_state("networkidle")
    page.screenshot(path=str(out / f"{name}.png"))
    print(f"  {name}: {page.url}")
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m demo.screenshots", description=__doc__.splitlines()[0])
    parser.add_argument("--server", default="http://127.0.0.1:8000")
    parser.add_argument("--username", default="admin")
    parser.add_argument("--password", required=True)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        page = browser.new_context(viewport=VIEWPORT).new_page()
        page.goto(args.server + "/login/")
        page.get_by_label("Username").fill(args.username)
        page.get_by_label("Password").fill(args.password)
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_url(f"{args.server}/")
        taken = sum(take(page, args.server, args.out, name, *where) for name, where in PAGES.items())
        browser.close()
    print(f"{taken} of {len(PAGES)} pages in {args.out}")
    return 0 if taken == len(PAGES) else 1


if __name__ == "__main__":
    raise SystemExit(main())

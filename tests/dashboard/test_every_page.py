"""Every dashboard page, crawled as an admin over a small fleet with history: what a person reads on each.

No page may show Python's ``None``, an unfilled placeholder, or a server error;
each answers 200 and names the project's favicon.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from core.models import ApiToken
from fleet import access
from fleet.models import Device, Site
from rollouts import services as rollouts
from tests.dashboard.fixtures import open_alert, registry_model, reporting, with_event, with_telemetry

pytestmark = pytest.mark.django_db

PLACEHOLDERS = (re.compile(r"\bNone\b"), re.compile(r"at or above N\b"), re.compile(r"\{\{|\}\}|\{%"))


def visible_text(html: str) -> str:
    """The page's text as a person reads it: no scripts, styles, JSON data or tags."""
    html = re.sub(r"<(script|style)\b.*?</\1>", " ", html, flags=re.S)
    return re.sub(r"<[^>]+>", " ", html)


@pytest.fixture
def pages(site: Site, other_site: Site, enroll_device: Callable[..., Any], admin_user: Any) -> dict[str, str]:
    online = reporting(with_telemetry(enroll_device(site, "cam-online").device), phase="active")
    online.record_presence(True, online.created_at)
    with_event(online, "model_swap", version="1.0.0")
    open_alert(online)
    quiet = enroll_device(other_site, "cam-quiet").device
    version = registry_model("detector", versions=2).versions.order_by("sequence").last()
    Device.objects.filter(pk=online.pk).update(desired={"model": {"name": "detector", "version": "1.1.0"}})
    rollout = rollouts.create(
        version=version,
        target={"sites": [site.slug]},
        plan={"stages": [{"kind": "percent", "value": 100}]},
        actor=admin_user,
        reason="release",
    )
    ApiToken.issue(admin_user, name="ci", scopes=["publish"])
    olga = get_user_model().objects.create_user("olga", password="pw-olga-123")
    access.set_role(actor=admin_user, user=olga, kind="operator", sites=[site])
    return {
        "overview": "/",
        "devices": "/devices/",
        "site": f"/sites/{site.slug}/",
        "quiet site": f"/sites/{other_site.slug}/",
        "device": f"/devices/{online.device_id}/",
        "device never heard from": f"/devices/{quiet.device_id}/",
        "rollouts": "/rollouts/",
        "rollout": f"/rollouts/{rollout.pk}/",
        "new rollout": f"/rollouts/new/?version={version.pk}",
        "models": "/models/",
        "escalations": "/escalations/",
        "advisor": "/escalations/advisor/",
        "export": "/escalations/export/",
        "alerts": "/alerts/",
        "audit": "/audit/",
        "tokens": "/tokens/",
        "users": "/users/",
    }


def test_no_page_shows_none_a_placeholder_or_an_error(admin_client: Client, pages: dict[str, str]) -> None:
    found = {}
    for name, path in pages.items():
        response = admin_client.get(path)
        html = response.content.decode()
        text = visible_text(html)
        problems = [pattern.pattern for pattern in PLACEHOLDERS if pattern.search(text)]
        if response.status_code != 200 or problems or "favicon.svg" not in html:
            found[name] = (response.status_code, problems)
    assert found == {}

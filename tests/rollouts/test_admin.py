"""The admin shows rollouts, their stages and gate results, and does not edit rollouts (the API's actions do)."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from rollouts import services

pytestmark = pytest.mark.django_db

PLAN = {"stages": [{"kind": "count", "value": 1}, {"kind": "percent", "value": 100}]}


def test_the_admin_lists_and_shows_a_rollout_read_only(versions, fleet_on_v1):
    _, v2 = versions
    rollout = services.create(version=v2, target={"running_model": "parts"}, plan=PLAN, actor="ci")
    client = Client()
    client.force_login(get_user_model().objects.create_superuser("root", password="pw-root-123"))

    for url in ("rollout", "rollouttemplate", "gateresult", "siterollback"):
        assert client.get(f"/admin/rollouts/{url}/").status_code == 200
    page = client.get(f"/admin/rollouts/rollout/{rollout.pk}/change/")
    assert page.status_code == 200 and b"Save" not in page.content
    assert client.get("/admin/rollouts/rollout/add/").status_code == 403

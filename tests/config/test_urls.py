from __future__ import annotations

import pytest
from django.test import Client
from rest_framework.test import APIClient

from fleet.models import Site

pytestmark = pytest.mark.django_db


def test_the_openapi_schema_lists_the_v1_paths(anonymous: APIClient, admin_client: APIClient) -> None:
    response = admin_client.get("/api/v1/schema/?format=json")
    assert response.status_code == 200
    paths = response.json()["paths"]
    for path in ("/api/v1/enroll", "/api/v1/sites/", "/api/v1/devices/", "/api/v1/devices/{device_id}/revoke/"):
        assert path in paths


def test_the_api_doc_page_loads_its_assets_locally(admin_client: APIClient) -> None:
    page = admin_client.get("/api/v1/docs/").content.decode()
    assert "swagger-ui" in page
    # Sites are often air-gapped: no asset may come from a CDN.
    assert "cdn." not in page and "unpkg" not in page


def test_the_dashboard_asks_for_a_login(client: Client) -> None:
    response = client.get("/")
    assert response.status_code == 302 and "/login" in response["Location"]


def test_the_dashboard_routes_site_and_device_pages_from_the_root(
    admin_client: APIClient, site: Site, enroll_device
) -> None:  # type: ignore[no-untyped-def]
    online = enroll_device(site, "cam-online").device
    enroll_device(site, "cam-offline")
    online.record_presence(True, online.created_at)
    page = admin_client.get("/").content.decode()
    assert "Plant A" in page and 'href="/sites/plant-a/"' in page
    assert 'data-testid="online-count">1<' in page and 'data-testid="device-count">2<' in page
    # The site page and the device list are routed from the root too, and list the devices with their state.
    site_page = admin_client.get("/sites/plant-a/").content.decode()
    assert f'data-device="{online.device_id}"' in site_page
    assert f'data-device="{online.device_id}"' in admin_client.get("/devices/?q=cam-online").content.decode()


def test_healthz_answers(client: Client) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}

"""Fixtures every suite shares: users in each role, API clients, sites and enrolled devices.

The test tree mirrors the source tree; a test's layer is a marker (``unit``,
``integration``, ``browser``, ``chaos``), so ``pytest -m unit`` runs the fast
ones of every part. A test that does not name its layer is ``integration``
when it touches the database, a broker or a live server, ``unit`` otherwise.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from rest_framework.test import APIClient

from bridge.process import Bridge, BridgeConfig
from core.models import ApiToken
from fleet import services
from fleet.models import EnrollmentToken, Site

LAYERS = ("unit", "integration", "browser", "chaos")
# Fixtures that reach a real service: a test using one is an integration test.
REAL_SERVICES = frozenset({"db", "transactional_db", "live_server", "mqtt_url", "broker", "mosquitto", "bridge"})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    chaos_selected = "chaos" in (config.getoption("markexpr") or "")
    skip_chaos = pytest.mark.skip(reason="long fault-injection loop: run it with `make chaos`")
    for item in items:
        if not any(item.get_closest_marker(layer) for layer in LAYERS):
            real = item.get_closest_marker("django_db") or REAL_SERVICES.intersection(getattr(item, "fixturenames", ()))
            item.add_marker(pytest.mark.integration if real else pytest.mark.unit)
        if item.get_closest_marker("chaos") is not None and not chaos_selected:
            item.add_marker(skip_chaos)


def _answers(host: str, port: int) -> bool:
    import socket

    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def mqtt_url() -> Iterator[str]:
    """The machine's Mosquitto on 1883 when it runs (as on CI), else the embedded broker.

    A newcomer's laptop without Mosquitto still runs every broker test against
    the embedded default; ``EDGEFLEET_TEST_MQTT=embedded`` forces that path.
    """
    forced = os.environ.get("EDGEFLEET_TEST_MQTT", "")
    if forced not in ("", "embedded", "mosquitto"):
        raise pytest.UsageError(f"EDGEFLEET_TEST_MQTT={forced!r}: use embedded or mosquitto")
    if forced != "embedded" and _answers("127.0.0.1", 1883):
        yield "mqtt://127.0.0.1:1883"
        return
    if forced == "mosquitto":
        pytest.fail("EDGEFLEET_TEST_MQTT=mosquitto but nothing answers on 127.0.0.1:1883")
    from tests.brokers import embedded_broker

    # Anonymous with every right, as a stock development Mosquitto: these tests
    # are about the bridge and the agent; ACLs have their own tests per broker.
    with embedded_broker(allow_anonymous=True) as broker:
        yield broker.url


@pytest.fixture(scope="session")
def shared_subscriptions(mqtt_url: str) -> bool:
    """Whether the broker under test supports ``$share`` (the embedded amqtt broker does not)."""
    return mqtt_url == "mqtt://127.0.0.1:1883"


@pytest.fixture
def bridge_group(shared_subscriptions: bool) -> str | None:
    """A fresh shared-subscription group for a test's bridges, or None to subscribe directly."""
    return f"test-{uuid.uuid4().hex[:8]}" if shared_subscriptions else None


@pytest.fixture
def bridge(mqtt_url: str, bridge_group: str | None) -> Iterator[Bridge]:
    """A real bridge on the test broker, polling for desired documents to publish five times a second."""
    bridge = Bridge(BridgeConfig(url=mqtt_url, shared_group=bridge_group, desired_poll_s=0.2))
    bridge.start()
    assert bridge.wait_connected(10), "bridge did not connect"
    yield bridge
    bridge.stop()


@pytest.fixture
def site(db: None) -> Site:
    return Site.objects.create(slug="plant-a", name="Plant A")


@pytest.fixture
def other_site(db: None) -> Site:
    return Site.objects.create(slug="plant-b", name="Plant B")


@pytest.fixture
def admin_user(db: None) -> Any:
    return get_user_model().objects.create_user("alice", password="pw-alice-123", is_staff=True)


@pytest.fixture
def viewer_user(db: None) -> Any:
    return get_user_model().objects.create_user("victor", password="pw-victor-123")


@pytest.fixture
def anonymous() -> APIClient:
    return APIClient()


@pytest.fixture
def admin_client(admin_user: Any) -> APIClient:
    client = APIClient()
    client.force_login(admin_user)
    return client


@pytest.fixture
def viewer_client(viewer_user: Any) -> APIClient:
    client = APIClient()
    client.force_login(viewer_user)
    return client


@pytest.fixture
def token_client(admin_user: Any) -> Callable[..., APIClient]:
    """An API client authenticated by a token with the given scopes."""

    def make(*scopes: str) -> APIClient:
        _, key = ApiToken.issue(admin_user, name=f"ci-{'-'.join(scopes) or 'none'}", scopes=list(scopes))
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")
        return client

    return make


@pytest.fixture
def enroll_device(db: None) -> Callable[..., services.Enrollment]:
    """Enroll a device through the real service, as the API does."""

    def make(site: Site, name: str = "cam-1", **facts: Any) -> services.Enrollment:
        _, token = EnrollmentToken.issue(site)
        return services.enroll(token=token, name=name, site_slug=site.slug, facts=facts)

    return make

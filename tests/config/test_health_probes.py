"""The probe port of the processes that serve no HTTP: the bridge's here, the worker's and beat's the same."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.utils import timezone

from agent.kernel import protocol
from bridge import metrics
from bridge.process import Bridge
from core.metrics import serve_probes
from fleet.models import Site
from tests.bridge.helpers import offline_bridge
from tests.telemetry.factories import Feed, batch


def get(url: str, **headers: str) -> tuple[int, str]:
    request = urllib.request.Request(url, headers=headers)  # noqa: S310 - a local test URL
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:  # noqa: S310
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


@pytest.fixture
def probes() -> Iterator[Callable[[Bridge], str]]:
    servers = []

    def start(bridge: Bridge) -> str:
        server = serve_probes(
            "127.0.0.1",
            0,
            live=lambda: metrics.liveness(bridge),
            ready=lambda: metrics.readiness(bridge),
            collectors=[metrics.BridgeCollector(bridge)],
        )
        servers.append(server)
        return f"http://127.0.0.1:{server.server_port}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.mark.django_db
def test_the_bridge_serves_its_counters_and_process_metrics(
    probes: Callable[[Bridge], str], site: Site, enroll_device: Callable[..., Any]
) -> None:
    device = enroll_device(site, "cam-1").device
    bridge = offline_bridge()
    feed = Feed(device)
    topic = protocol.topic(device.device_id, "telemetry")
    bridge.handle_many([(topic, protocol.encode(batch(feed.heartbeat(timezone.now())))), (topic, b"{")])
    status, text = get(f"{probes(bridge)}/metrics")
    assert status == 200
    assert 'edgefleet_bridge_messages_total{kind="telemetry"} 1.0' in text
    assert 'edgefleet_bridge_rejected_total{reason="not_json"} 1.0' in text
    assert "edgefleet_bridge_records_total 1.0" in text
    assert 'edgefleet_bridge_ingest_lag_seconds_bucket{le="+Inf"} 1.0' in text
    assert "edgefleet_bridge_connected 0.0" in text and "edgefleet_bridge_queued_messages 0.0" in text
    assert "process_resident_memory_bytes" in text and "process_open_fds" in text


@pytest.mark.django_db
def test_metrics_on_the_probe_port_want_the_token_when_one_is_set(
    probes: Callable[[Bridge], str], settings: Any
) -> None:
    settings.METRICS_TOKEN = "scrape-me"
    url = probes(offline_bridge())
    assert get(f"{url}/metrics")[0] == 401
    assert get(f"{url}/metrics", Authorization="Bearer scrape-me")[0] == 200
    # The probes themselves carry nothing secret and need no token.
    assert get(f"{url}/healthz")[0] == 200
    assert get(f"{url}/elsewhere")[0] == 404


@pytest.mark.django_db
def test_a_bridge_not_subscribed_is_alive_but_not_ready(probes: Callable[[Bridge], str], settings: Any) -> None:
    settings.READINESS_CHECKS = ["database"]
    url = probes(offline_bridge())
    status, body = get(f"{url}/healthz")
    assert (status, json.loads(body)) == (200, {"status": "ok", "workers_alive": {}, "stale_workers_s": {}})
    status, body = get(f"{url}/readyz")
    assert status == 503
    checks = json.loads(body)["checks"]
    assert checks["database"]["ok"] is True and checks["subscribed"]["ok"] is False


@pytest.mark.django_db
def test_a_stuck_worker_fails_the_bridges_liveness(probes: Callable[[Bridge], str], settings: Any) -> None:
    bridge = offline_bridge()
    url = probes(bridge)
    bridge.worker_progress["bridge-worker-0"] = time.time() - settings.BRIDGE_STUCK_AFTER_S - 5
    status, body = get(f"{url}/healthz")
    assert status == 503 and json.loads(body)["status"] == "stuck"
    assert "bridge-worker-0" in json.loads(body)["stale_workers_s"]


@pytest.mark.django_db(transaction=True)
def test_a_bridge_subscribed_at_the_broker_is_ready(
    probes: Callable[[Bridge], str], bridge: Bridge, settings: Any
) -> None:
    settings.READINESS_CHECKS = ["database", "migrations"]
    status, body = get(f"{probes(bridge)}/readyz")
    assert status == 200, body
    assert json.loads(body)["checks"]["subscribed"]["ok"] is True
    status, body = get(f"{probes(bridge)}/healthz")
    assert status == 200 and all(json.loads(body)["workers_alive"].values())

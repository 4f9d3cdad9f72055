"""/metrics: valid Prometheus text, edgefleet_ series, bridge counters served by the web process."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone

from agent.kernel import protocol
from bridge.process import Bridge
from fleet.models import Site
from tests.bridge.helpers import offline_bridge, published
from tests.telemetry.factories import Feed, batch
from tests.telemetry.helpers import alive

pytestmark = pytest.mark.django_db

_VALUE = r"[-+]?(\d+(\.\d*)?([eE][-+]?\d+)?|\+Inf|NaN)"
_SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(\{(?P<labels>[^}]*)\})? (?P<value>" + _VALUE + r")$")
_LABEL = re.compile(r'^[a-zA-Z_][a-zA-Z0-9_]*="([^"\\]|\\.)*"$')


def parse(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """A strict reader of the text format: TYPE before samples, well-formed labels and values."""
    assert text.endswith("\n")
    families: dict[str, str] = {}
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for line in text.splitlines():
        if line.startswith("# HELP "):
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert name not in families, f"{name} declared twice"
            assert kind in {"counter", "gauge", "histogram", "summary", "untyped"}
            families[name] = kind
            continue
        match = _SAMPLE.match(line)
        assert match, f"malformed sample line: {line!r}"
        name = match["name"]
        family = re.sub(r"_(bucket|sum|count)$", "", name) if name not in families else name
        assert family in families, f"{name} has no TYPE"
        labels: dict[str, str] = {}
        if match["labels"]:
            for pair in re.findall(r'[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\]|\\.)*"', match["labels"]):
                assert _LABEL.match(pair)
                key, value = pair.split("=", 1)
                labels[key] = value[1:-1]
        samples.setdefault(name, []).append((labels, float(match["value"])))
    # Ours, and the standard ones prometheus_client gives every process.
    assert all(name.startswith(("edgefleet_", "process_", "python_")) for name in families)
    return samples


@pytest.fixture
def fed(site: Site, enroll_device: Callable[..., Any]) -> Bridge:
    device = enroll_device(site).device
    alive(device, timezone.now(), outbox_depth=120)
    bridge = offline_bridge(client_id="bridge-a")
    feed = Feed(device)
    bridge.handle_many(
        [(protocol.topic(device.device_id, "telemetry"), protocol.encode(batch(feed.heartbeat(timezone.now()))))]
    )
    bridge.handle_many([(protocol.topic(device.device_id, "telemetry"), b"{")])
    assert published(bridge, "ack") == [(device.device_id, {"v": 1, "type": "ack", "seq": 1})]
    bridge.export_stats()
    return bridge


def test_metrics_serve_the_bridges_counters_in_the_prometheus_text_format(fed: Bridge) -> None:
    answer = Client().get("/metrics")
    assert answer.status_code == 200 and answer["Content-Type"].startswith("text/plain; version=0.0.4")
    samples = parse(answer.content.decode())
    assert samples["edgefleet_ingest_records_total"] == [({"bridge": "bridge-a"}, 1.0)]
    assert ({"bridge": "bridge-a", "reason": "not_json"}, 1.0) in samples["edgefleet_ingest_rejected_total"]
    assert samples["edgefleet_ingest_lag_seconds_count"] == [({"bridge": "bridge-a"}, 1.0)]
    buckets = [v for labels, v in samples["edgefleet_ingest_lag_seconds_bucket"]]
    assert buckets == sorted(buckets) and buckets[-1] == 1.0, "cumulative buckets ending at the count"
    assert samples["edgefleet_ingest_records_last_minute"] == [({}, 1.0)]
    assert samples["edgefleet_device_outbox_depth"] == [({"site": "plant-a"}, 0.0)]
    assert ({"site": "plant-a", "state": "online"}, 1.0) in samples["edgefleet_devices"]
    assert "edgefleet_task_queue_depth" in samples and "edgefleet_task_queue_up" in samples


def test_device_outbox_depths_come_from_their_newest_heartbeats(site: Site, enroll_device: Callable[..., Any]) -> None:
    for i, depth in enumerate([120, 30]):
        alive(enroll_device(site, name=f"cam-{i}").device, timezone.now(), outbox_depth=depth)
    samples = parse(Client().get("/metrics").content.decode())
    assert samples["edgefleet_device_outbox_depth"] == [({"site": "plant-a"}, 150.0)]
    assert samples["edgefleet_device_outbox_depth_max"] == [({"site": "plant-a"}, 120.0)]


def test_metrics_want_the_token_when_one_is_set(settings: Any, db: None) -> None:
    settings.METRICS_TOKEN = "scrape-me"
    assert Client().get("/metrics").status_code == 401
    assert Client().get("/metrics", HTTP_AUTHORIZATION="Bearer wrong").status_code == 401
    assert Client().get("/metrics", HTTP_AUTHORIZATION="Bearer scrape-me").status_code == 200

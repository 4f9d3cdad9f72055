"""The bridge's own metrics and probes, served on its probe port (``PROBE_PORT``).

The collector reads the counters the bridge already keeps (``Bridge.snapshot``)
when Prometheus scrapes, so the ingest path pays nothing for it. The same
counters reach the web process's ``/metrics`` through the database
(``telemetry.exporter``) with every bridge in one place; these come from the
bridge itself, with its process metrics, while the database is unreachable.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from django.conf import settings
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from bridge.process import Bridge
from core import health
from telemetry.exporter import LAG_BUCKETS


class BridgeCollector(Collector):
    def __init__(self, bridge: Bridge) -> None:
        self.bridge = bridge

    def collect(self) -> Iterator[Metric]:
        counters = self.bridge.snapshot()
        accepted = CounterMetricFamily(
            "edgefleet_bridge_messages", "Device messages stored, by kind (the topic's suffix).", labels=["kind"]
        )
        for kind, n in sorted(counters["accepted"].items()):
            accepted.add_metric([kind], n)
        yield accepted
        rejected = CounterMetricFamily(
            "edgefleet_bridge_rejected",
            "Device messages dropped or refused, by reason (overloaded: the inbox was full).",
            labels=["reason"],
        )
        for reason, n in sorted(counters["rejected"].items()):
            rejected.add_metric([reason], n)
        yield rejected
        yield CounterMetricFamily("edgefleet_bridge_records", "Telemetry records stored.", value=counters["records"])
        yield CounterMetricFamily(
            "edgefleet_bridge_batches", "Store transactions committed.", value=counters["batches"]
        )
        buckets, cumulative = [], 0
        for bound in LAG_BUCKETS:
            cumulative += counters["lag_buckets"].get(str(bound), 0)
            buckets.append((str(float(bound)), cumulative))
        buckets.append(("+Inf", counters["records"]))
        yield HistogramMetricFamily(
            "edgefleet_bridge_ingest_lag_seconds",
            "Time from a record's timestamp on the device to its storage.",
            buckets=buckets,
            sum_value=counters["lag_sum"],
        )
        yield GaugeMetricFamily(
            "edgefleet_bridge_queued_messages", "Messages received, waiting for a worker.", value=self.bridge.queued()
        )
        yield GaugeMetricFamily(
            "edgefleet_bridge_connected",
            "1 while connected to the broker with every subscription confirmed.",
            value=int(self.bridge.wait_connected(0)),
        )
        progress = GaugeMetricFamily(
            "edgefleet_bridge_worker_last_progress_timestamp_seconds",
            "When each worker thread last went round its loop (a stale one is stuck).",
            labels=["worker"],
        )
        restarts = CounterMetricFamily(
            "edgefleet_bridge_worker_restarts", "Worker threads restarted after they died.", labels=["worker"]
        )
        for name, worker in counters["workers"].items():
            progress.add_metric([name], worker["progress_at"])
            restarts.add_metric([name], worker["restarts"])
        yield progress
        yield restarts


def liveness(bridge: Bridge) -> tuple[bool, dict[str, object]]:
    """Alive while every worker thread runs and went round its loop within BRIDGE_STUCK_AFTER_S.

    A dead worker is restarted by ``Bridge.supervise``; a stuck one cannot be,
    and leaves its share of the fleet's devices unread: a restart is the cure.
    """
    now = time.time()
    alive = bridge.workers_alive()
    stale = {
        name: round(now - worker["progress_at"], 1)
        for name, worker in bridge.snapshot()["workers"].items()
        if now - worker["progress_at"] > settings.BRIDGE_STUCK_AFTER_S
    }
    ok = all(alive.values()) and not stale
    return ok, {"status": "ok" if ok else "stuck", "workers_alive": alive, "stale_workers_s": stale}


def readiness(bridge: Bridge) -> tuple[bool, dict[str, object]]:
    """Ready when subscribed at the broker and every configured check passes."""
    ready, body = health.readiness()
    subscribed = bridge.wait_connected(0)
    checks = body["checks"]
    assert isinstance(checks, dict)
    checks["subscribed"] = {"ok": subscribed, "detail": bridge.config.url}
    ready = ready and subscribed
    body["status"] = "ready" if ready else "not_ready"
    return ready, body

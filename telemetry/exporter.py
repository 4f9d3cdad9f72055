"""The control plane's own health in the Prometheus text format (``/metrics``).

The bridge runs in its own process (several may run), so it cannot share
in-memory counters with the web process. Each bridge writes its counters to
its own ``BridgeStats`` row every ``BRIDGE_STATS_INTERVAL_S`` seconds; this
module reads those rows and labels every series with ``bridge``, so a
restarted bridge shows as a new series and Prometheus' ``rate()`` handles it
like any counter reset. The database is already shared by every process and
needs no new service; the cost is one small upsert per bridge per interval.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

from celery import current_app as app
from django.db.models import BigIntegerField, Count, Max, Q, Sum
from django.db.models.fields.json import KT
from django.db.models.functions import Cast
from django.utils import timezone

from fleet.models import Device
from telemetry.models import Alert, BridgeStats, Quarantine, TelemetryRecord

log = logging.getLogger(__name__)

# Ingest lag buckets (seconds): from a live device (sub-second) to an outbox
# drained after an outage (minutes and more).
LAG_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape(str(v))}"' for k, v in labels.items()) + "}"


def _number(value: float) -> str:
    if value == float("inf"):
        return "+Inf"
    return repr(float(value)) if isinstance(value, float) else str(value)


Sample = tuple[str, dict[str, str], float]  # (name suffix, labels, value)


class Exposition:
    """Collects families and writes them once each, with HELP and TYPE first."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str, samples: Iterable[Sample]) -> None:
        self.lines.append(f"# HELP {name} {help_text}")
        self.lines.append(f"# TYPE {name} {kind}")
        for suffix, labels, value in samples:
            self.lines.append(f"{name}{suffix}{_labels(labels)} {_number(value)}")

    def render(self) -> str:
        return "\n".join(self.lines) + "\n"


def render() -> str:
    out = Exposition()
    stats = list(BridgeStats.objects.all())
    out.family(
        "edgefleet_ingest_messages_total",
        "counter",
        "Device messages the bridges accepted, by type.",
        [("", {"bridge": s.bridge_id, "type": t}, n) for s in stats for t, n in _items(s, "accepted")],
    )
    out.family(
        "edgefleet_ingest_records_total",
        "counter",
        "Telemetry records the bridges stored (redeliveries included).",
        [("", {"bridge": s.bridge_id}, s.counters.get("records", 0)) for s in stats],
    )
    out.family(
        "edgefleet_ingest_batches_total",
        "counter",
        "Store transactions the bridges committed.",
        [("", {"bridge": s.bridge_id}, s.counters.get("batches", 0)) for s in stats],
    )
    out.family(
        "edgefleet_ingest_rejected_total",
        "counter",
        "Device messages the bridges rejected, by reason.",
        [("", {"bridge": s.bridge_id, "reason": r}, n) for s in stats for r, n in _items(s, "rejected")],
    )
    lag_samples: list[Sample] = []
    for s in stats:
        # The bridge counts each record once, in the first bucket that holds it.
        buckets = s.counters.get("lag_buckets", {})
        cumulative = 0
        for bound in LAG_BUCKETS:
            cumulative += buckets.get(str(bound), 0)
            lag_samples.append(("_bucket", {"bridge": s.bridge_id, "le": _number(bound)}, cumulative))
        lag_samples.append(("_bucket", {"bridge": s.bridge_id, "le": "+Inf"}, s.counters.get("records", 0)))
        lag_samples.append(("_sum", {"bridge": s.bridge_id}, float(s.counters.get("lag_sum", 0.0))))
        lag_samples.append(("_count", {"bridge": s.bridge_id}, s.counters.get("records", 0)))
    out.family(
        "edgefleet_ingest_lag_seconds",
        "histogram",
        "Time from a record's timestamp on the device to its storage.",
        lag_samples,
    )
    out.family(
        "edgefleet_bridge_last_report_timestamp_seconds",
        "gauge",
        "When each bridge last wrote its counters.",
        [("", {"bridge": s.bridge_id}, s.updated_at.timestamp()) for s in stats],
    )
    _workers(out, stats)
    out.family(
        "edgefleet_ingest_restamped_total",
        "counter",
        "Records and events from devices with clocks ahead, stored at the receiving time.",
        [("", {"bridge": s.bridge_id}, s.counters.get("restamped", 0)) for s in stats],
    )
    recent = TelemetryRecord.objects.filter(received_at__gte=timezone.now() - timedelta(minutes=1)).count()
    out.family(
        "edgefleet_ingest_records_last_minute",
        "gauge",
        "Telemetry records stored in the last 60 seconds.",
        [("", {}, recent)],
    )
    _devices(out)
    alerts = Alert.objects.filter(state__in=[Alert.State.OPEN, Alert.State.ACKNOWLEDGED]).values("rule__kind", "state")
    out.family(
        "edgefleet_alerts",
        "gauge",
        "Live alerts by rule and state.",
        [("", {"rule": a["rule__kind"], "state": a["state"]}, a["n"]) for a in alerts.annotate(n=Count("id"))],
    )
    quarantined = Quarantine.objects.values("source").annotate(n=Count("id")).order_by("source")
    out.family(
        "edgefleet_quarantined_rows",
        "gauge",
        "Stored rows a periodic job could not process and set aside, by job.",
        [("", {"source": q["source"]}, q["n"]) for q in quarantined],
    )
    _queue(out)
    return out.render()


def _workers(out: Exposition, stats: list[BridgeStats]) -> None:
    """Per worker thread: when it last went round its loop, and how often it was restarted.

    The bridge's own report keeps coming while a worker is stuck or dead;
    these show the worker itself. An idle worker still marks progress every second.
    """
    workers = [
        (s.bridge_id, name, w)
        for s in stats
        for name, w in sorted((s.counters.get("workers") or {}).items())
        if isinstance(w, dict)
    ]
    out.family(
        "edgefleet_bridge_worker_last_progress_timestamp_seconds",
        "gauge",
        "When each bridge worker thread last went round its loop (a stale one is stuck or dead).",
        [("", {"bridge": b, "worker": name}, float(w.get("progress_at", 0))) for b, name, w in workers],
    )
    out.family(
        "edgefleet_bridge_worker_restarts_total",
        "counter",
        "Bridge worker threads restarted after they died.",
        [("", {"bridge": b, "worker": name}, int(w.get("restarts", 0))) for b, name, w in workers],
    )


def _items(stats: BridgeStats, name: str) -> list[tuple[str, int]]:
    counts = stats.counters.get(name, {})
    return sorted(counts.items()) if isinstance(counts, dict) else []


def _devices(out: Exposition) -> None:
    rows = (
        Device.objects.filter(revoked_at__isnull=True)
        .values("site__slug")
        .annotate(online=Count("id", filter=Q(online=True)), total=Count("id"))
        .order_by("site__slug")
    )
    out.family(
        "edgefleet_devices",
        "gauge",
        "Enrolled devices by site and presence.",
        [
            ("", {"site": r["site__slug"], "state": st}, r["online"] if st == "online" else r["total"] - r["online"])
            for r in rows
            for st in ("online", "offline")
        ],
    )
    # Outbox depth from each device's newest heartbeat, summed and maxed per site.
    depths = (
        Device.objects.filter(revoked_at__isnull=True, last_heartbeat__has_key="outbox_depth")
        .values("site__slug")
        .annotate(total=Sum(_depth()), deepest=Max(_depth()))
        .order_by("site__slug")
    )
    depth_rows = list(depths)
    out.family(
        "edgefleet_device_outbox_depth",
        "gauge",
        "Telemetry records waiting in device outboxes (sum per site).",
        [("", {"site": r["site__slug"]}, int(r["total"] or 0)) for r in depth_rows],
    )
    out.family(
        "edgefleet_device_outbox_depth_max",
        "gauge",
        "The deepest device outbox per site.",
        [("", {"site": r["site__slug"]}, int(r["deepest"] or 0)) for r in depth_rows],
    )


def _depth() -> Cast:
    return Cast(KT("last_heartbeat__outbox_depth"), BigIntegerField())


def _queue(out: Exposition) -> None:
    """Messages waiting in the Celery default queue, read through kombu (any transport)."""
    queue_name = app.conf.task_default_queue or "celery"
    try:
        with app.connection_for_read() as connection:
            connection.ensure_connection(max_retries=1, timeout=2)
            # kombu types the channel as its minimal protocol; every transport's channel declares queues.
            channel: Any = connection.default_channel
            depth = channel.queue_declare(queue=queue_name, passive=True).message_count
        up = 1
    except Exception as exc:
        log.warning("task queue depth unavailable", extra={"error": str(exc)})
        depth, up = 0, 0
    out.family("edgefleet_task_queue_up", "gauge", "Whether the task queue answered.", [("", {}, up)])
    out.family(
        "edgefleet_task_queue_depth", "gauge", "Tasks waiting in the queue.", [("", {"queue": queue_name}, depth)]
    )

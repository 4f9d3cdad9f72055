"""Each process's own Prometheus metrics, and the probe port of the processes that serve no HTTP.

Built on ``prometheus_client``, which also gives the standard ``process_*``
(memory, CPU, open files) and ``python_*`` series.

* web: requests by view, method and status, and their latency
  (``RequestMetricsMiddleware``), appended to the fleet metrics of ``/metrics``;
* worker: tasks by name and final state, and their duration (``connect_celery``);
* bridge: its own collector (``bridge.metrics``), read when scraped.

gunicorn and Celery's prefork pool run the work in child processes, each with
its own counters. With ``PROMETHEUS_MULTIPROC_DIR`` set (deploy/gunicorn.conf.py
sets one when the environment does not), each child writes its samples to
files there and a scrape adds them up, whichever child answers it. In that
mode prometheus_client exports no ``process_*`` series (they describe one
process); ``_LiveProcesses`` exports them for every live process that wrote
there, labelled with its ``pid``.

The bridge, the worker and the beat serve ``/healthz``, ``/readyz`` and
``/metrics`` on ``PROBE_PORT`` (off when 0) from a thread of their own, so an
orchestrator probes them the same way as the web process.
"""

from __future__ import annotations

import functools
import hmac
import logging
import os
import socketserver
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import orjson
from celery import signals
from django.conf import settings
from django.db import connections
from django.http import HttpRequest, HttpResponse
from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
    multiprocess,
)
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from core import health

log = logging.getLogger(__name__)

# The text format every scraper reads; the same as the fleet metrics of /metrics.
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
# A *_created series per labelled sample doubles what Prometheus stores for nothing it alerts on.
disable_created_metrics()

# Up to a slow dashboard page or a bundle upload; a streamed download counts until its first byte.
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_TASK_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0)
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

HTTP_REQUESTS = Counter(
    "edgefleet_http_requests_total", "HTTP requests answered, by view, method and status.", ["view", "method", "status"]
)
HTTP_LATENCY = Histogram(
    "edgefleet_http_request_duration_seconds",
    "Time to answer an HTTP request (to the first byte of a streamed body), by view and method.",
    ["view", "method"],
    buckets=_LATENCY_BUCKETS,
)
TASKS = Counter("edgefleet_celery_tasks_total", "Celery tasks run, by task and final state.", ["task", "state"])
TASK_DURATION = Histogram(
    "edgefleet_celery_task_duration_seconds", "Time a Celery task ran, by task.", ["task"], buckets=_TASK_BUCKETS
)


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


class _LiveProcesses(Collector):
    """``process_*`` of every live process that wrote to the multiprocess directory, by ``pid``."""

    def __init__(self, directory: str) -> None:
        self.directory = Path(directory)

    def pids(self) -> list[int]:
        # This process always: it may not have written a sample yet.
        found = {os.getpid()}
        # prometheus_client names its files <kind>_<pid>.db.
        for path in self.directory.glob("*.db"):
            tail = path.stem.rsplit("_", 1)[-1]
            if tail.isdigit() and Path(f"/proc/{tail}").exists():
                found.add(int(tail))
        return sorted(found)

    def collect(self) -> Iterator[Metric]:
        merged: dict[str, Metric] = {}
        for pid in self.pids():
            for family in ProcessCollector(pid=functools.partial(int, pid), registry=None).collect():
                target = merged.setdefault(family.name, Metric(family.name, family.documentation, family.type))
                for sample in family.samples:
                    target.add_sample(sample.name, {**sample.labels, "pid": str(pid)}, sample.value)
        yield from merged.values()


def registry() -> CollectorRegistry:
    """This process's registry, or the sum of every child's when running several (see the module docstring)."""
    directory = multiprocess_dir()
    if directory is None:
        return REGISTRY
    combined = CollectorRegistry()
    multiprocess.MultiProcessCollector(combined, path=directory)
    combined.register(_LiveProcesses(directory))
    return combined


def exposition(collectors: Iterable[Collector] = ()) -> bytes:
    """The text format of this process's metrics, and of ``collectors`` (read now, never registered globally)."""
    parts = [generate_latest(registry())]
    extra = list(collectors)
    if extra:
        own = CollectorRegistry(auto_describe=False)
        for collector in extra:
            own.register(collector)
        parts.append(generate_latest(own))
    return b"".join(parts)


def authorized(header: str) -> bool:
    """Whether an Authorization header carries METRICS_TOKEN (always, when none is set)."""
    token = settings.METRICS_TOKEN
    if not token:
        return True
    offered = header.removeprefix("Bearer ").strip()
    return hmac.compare_digest(offered.encode(), token.encode())


# --- web -------------------------------------------------------------------


class RequestMetricsMiddleware:
    """Counts and times every request; first in MIDDLEWARE, so it sees the status that went out."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        started = time.perf_counter()
        response = self.get_response(request)
        match = request.resolver_match
        # The route's name, never the path: a path holds ids, one series each.
        view = (match.view_name or match.route) if match is not None else "<unresolved>"
        method = request.method if request.method in _METHODS else "other"
        HTTP_LATENCY.labels(view, method).observe(time.perf_counter() - started)
        HTTP_REQUESTS.labels(view, method, str(response.status_code)).inc()
        return response


# --- Celery ----------------------------------------------------------------

_task_started: dict[str, float] = {}


def _on_task_prerun(task_id: str | None = None, **_: Any) -> None:
    if task_id is not None:
        _task_started[task_id] = time.perf_counter()


def _on_task_postrun(task_id: str | None = None, task: Any = None, state: str | None = None, **_: Any) -> None:
    name = getattr(task, "name", None) or "unknown"
    TASKS.labels(name, state or "UNKNOWN").inc()
    started = _task_started.pop(task_id or "", None)
    if started is not None:
        TASK_DURATION.labels(name).observe(time.perf_counter() - started)


def _on_worker_init(sender: Any = None, **_: Any) -> None:
    if not settings.PROBE_PORT:
        return
    directory = multiprocess_dir()
    if directory is not None:
        Path(directory).mkdir(parents=True, exist_ok=True)
    pool = str(getattr(sender, "pool_cls", ""))
    if directory is None and "prefork" in pool and (getattr(sender, "concurrency", 1) or 1) > 1:
        log.error(
            "PROMETHEUS_MULTIPROC_DIR is not set: the prefork pool's child processes run the tasks, "
            "and their task metrics will not show on this worker's /metrics"
        )
    serve_probes(settings.PROBE_ADDRESS, settings.PROBE_PORT, ready=_ready)


def _on_beat_init(**_: Any) -> None:
    if settings.PROBE_PORT:
        serve_probes(settings.PROBE_ADDRESS, settings.PROBE_PORT, ready=_ready)


def _on_child_exit(pid: int | None = None, **_: Any) -> None:
    # A dead child's live gauges must go; its counters stay in the sum.
    if multiprocess_dir() is not None:
        multiprocess.mark_process_dead(pid or os.getpid())


def _ready() -> tuple[bool, dict[str, object]]:
    return health.readiness()


def connect_celery() -> None:
    """Count tasks, and serve the probe port from a worker's or beat's main process."""
    signals.task_prerun.connect(_on_task_prerun, weak=False)
    signals.task_postrun.connect(_on_task_postrun, weak=False)
    signals.worker_init.connect(_on_worker_init, weak=False)
    signals.beat_init.connect(_on_beat_init, weak=False)
    signals.worker_process_shutdown.connect(_on_child_exit, weak=False)


# --- the probe port --------------------------------------------------------


def _alive() -> tuple[bool, dict[str, object]]:
    return True, {"status": "ok"}


class _Server(socketserver.ThreadingMixIn, WSGIServer):
    # A slow scrape must not hold up a liveness probe.
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        log.debug("probe request: " + format, *args)


_servers: dict[tuple[str, int], WSGIServer] = {}
_servers_lock = threading.Lock()


def probe_app(
    live: Callable[[], tuple[bool, dict[str, object]]] = _alive,
    ready: Callable[[], tuple[bool, dict[str, object]]] = _ready,
    collectors: Iterable[Collector] = (),
) -> Callable[..., list[bytes]]:
    """A WSGI app answering /healthz, /readyz and /metrics as the web process does."""
    extra = list(collectors)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            if not authorized(environ.get("HTTP_AUTHORIZATION", "")):
                start_response("401 Unauthorized", [("Content-Type", "text/plain")])
                return [b"metrics token required\n"]
            body = exposition(extra)
            start_response("200 OK", [("Content-Type", CONTENT_TYPE), ("Content-Length", str(len(body)))])
            return [body]
        if path not in ("/healthz", "/readyz"):
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"not found\n"]
        try:
            ok, answer = (live if path == "/healthz" else ready)()
        except Exception as exc:
            # A probe that raises is a failed probe, with its reason.
            log.exception("probe failed", extra={"path": path})
            ok, answer = False, {"status": "error", "detail": f"{type(exc).__name__}: {exc}"[:300]}
        finally:
            # Each request runs in a thread of its own: its database connection would outlive it.
            connections.close_all()
        body = orjson.dumps(answer)
        status = "200 OK" if ok else "503 Service Unavailable"
        start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]

    return app


def serve_probes(
    address: str,
    port: int,
    *,
    live: Callable[[], tuple[bool, dict[str, object]]] = _alive,
    ready: Callable[[], tuple[bool, dict[str, object]]] = _ready,
    collectors: Iterable[Collector] = (),
) -> WSGIServer:
    """Serve the probes from a daemon thread; port 0 picks a free one (``server.server_port``).

    Once per address and port in a process: ``celery worker -B`` runs the
    worker's and the beat's start-up in one process.
    """
    with _servers_lock:
        if port and (address, port) in _servers:
            return _servers[(address, port)]
        server = make_server(
            address, port, probe_app(live, ready, collectors), server_class=_Server, handler_class=_QuietHandler
        )
        _servers[(address, server.server_port)] = server
    threading.Thread(target=server.serve_forever, name="probes", daemon=True).start()
    log.info("probes listening", extra={"address": address, "port": server.server_port})
    return server

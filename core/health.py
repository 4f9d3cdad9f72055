"""Liveness and readiness of the control plane's processes (docs/operations.md).

Liveness (``/healthz``) says only that the process answers: an orchestrator
restarts a process that fails it, and restarting every web process because
the database is down would turn an outage into a restart storm. So it
touches no dependency.

Readiness (``/readyz``) says whether the process can do its work now: the
database answers, every migration this code knows is applied (a process of a
new release is not sent traffic before its migrations ran), and the task
queue and MQTT broker it is configured for accept a connection. A process
that is not ready is taken out of the load balancer, not restarted.
``READINESS_CHECKS`` chooses which checks decide; each answer lists them all.

The web process serves both as views; the bridge, the worker and the beat
serve them on their probe port (``core.metrics.serve_probes``).
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

from django.conf import settings
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import resolve
from kombu import Connection

log = logging.getLogger(__name__)

# Transports that live in this process or on its disk: nothing to reach.
_LOCAL_TRANSPORTS = ("filesystem", "memory")


@dataclass(frozen=True)
class Result:
    name: str
    ok: bool
    detail: str
    seconds: float

    def as_json(self) -> dict[str, object]:
        return {"ok": self.ok, "detail": self.detail, "ms": round(self.seconds * 1000, 1)}


class _Migrations:
    """Whether every migration is applied; remembered once true.

    Loading the migration graph costs tens of milliseconds, and the answer
    can only change from false to true while this code runs (a later release
    brings its migrations with its own processes), so it is not paid on every probe.
    """

    def __init__(self) -> None:
        self._applied = False
        self._lock = threading.Lock()

    def __call__(self) -> str:
        if self._applied:
            return "all applied"
        with self._lock:
            executor = MigrationExecutor(connection)
            plan = executor.migration_plan(executor.loader.graph.leaf_nodes())
            if plan:
                names = ", ".join(f"{m.app_label}.{m.name}" for m, _ in plan[:5])
                raise RuntimeError(f"{len(plan)} unapplied: {names}{', ...' if len(plan) > 5 else ''}")
            self._applied = True
            return "all applied"


def database() -> str:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    return connection.vendor


def task_queue() -> str:
    url = settings.CELERY_BROKER_URL
    scheme = urlsplit(url).scheme
    if scheme in _LOCAL_TRANSPORTS:
        return f"{scheme} transport, nothing to reach"
    timeout = settings.HEALTH_CHECK_TIMEOUT_S
    with Connection(url, connect_timeout=timeout, transport_options={"socket_timeout": timeout}) as conn:
        conn.ensure_connection(max_retries=1, timeout=timeout)
        # Redis connects lazily: open a channel so the server is asked something.
        conn.default_channel  # noqa: B018
    return f"{scheme} answers"


def mqtt() -> str:
    parts = urlsplit(settings.MQTT_URL)
    port = parts.port or (8883 if parts.scheme == "mqtts" else 1883)
    # A TCP connection, not an MQTT session: a probe every few seconds must not
    # authenticate, create sessions or fill the broker's log.
    with socket.create_connection((parts.hostname or "127.0.0.1", port), timeout=settings.HEALTH_CHECK_TIMEOUT_S):
        pass
    return f"{parts.hostname}:{port} accepts connections"


migrations = _Migrations()

CHECKS: dict[str, Callable[[], str]] = {
    "database": database,
    "migrations": migrations,
    "task_queue": task_queue,
    "mqtt": mqtt,
}


def run(names: Iterable[str]) -> list[Result]:
    results = []
    for name in names:
        started = time.perf_counter()
        try:
            detail, ok = CHECKS[name](), True
        # Whatever a dependency raises is the probe's answer, reported and logged, never raised.
        except Exception as exc:
            detail, ok = f"{type(exc).__name__}: {exc}"[:300], False
            log.warning("readiness check failed", extra={"check": name, "error": detail})
        results.append(Result(name, ok, detail, time.perf_counter() - started))
    return results


def readiness(names: Iterable[str] | None = None) -> tuple[bool, dict[str, object]]:
    """Run the checks (READINESS_CHECKS by default); returns (ready, the JSON answer)."""
    results = run(settings.READINESS_CHECKS if names is None else names)
    ready = all(r.ok for r in results)
    return ready, {"status": "ready" if ready else "not_ready", "checks": {r.name: r.as_json() for r in results}}


def healthz(request: HttpRequest) -> JsonResponse:
    """Liveness: the process answers. Touches no dependency (see the module docstring)."""
    return JsonResponse({"status": "ok"})


def readyz(request: HttpRequest) -> JsonResponse:
    ready, body = readiness()
    return JsonResponse(body, status=200 if ready else 503, headers={"Cache-Control": "no-store"})


# Answered before Host validation (``ProbeMiddleware``).
PROBE_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})


class ProbeMiddleware:
    """Serves the probe and scrape paths ahead of the rest of the middleware.

    Kubernetes probes and Prometheus address a web process by its pod IP, a
    Host that ALLOWED_HOSTS cannot list in advance; CommonMiddleware would
    answer them 400 (DisallowedHost). These views need no session, user or
    CSRF token (``/metrics`` checks its own token), so they skip those too.
    The TLS proxy keeps them off the public side (deploy/caddy/Caddyfile).
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if request.path_info not in PROBE_PATHS:
            return self.get_response(request)
        match = resolve(request.path_info)
        request.resolver_match = match
        response: HttpResponse = match.func(request, *match.args, **match.kwargs)
        return response

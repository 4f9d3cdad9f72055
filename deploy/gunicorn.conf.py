"""gunicorn for the control plane's web process: `gunicorn -c deploy/gunicorn.conf.py config.wsgi`.

Every value comes from the environment (docs/operations.md, "The web process").
Workers are processes, so Prometheus counters live in PROMETHEUS_MULTIPROC_DIR
(core/metrics.py): emptied when gunicorn starts, and each dead worker's live
gauges removed when it exits.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

# Before anything imports prometheus_client: it picks its storage from this variable at import.
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="edgefleet-prometheus-")

from prometheus_client import multiprocess

from config import env

bind = [env.string("GUNICORN_BIND", "0.0.0.0:8000") or "0.0.0.0:8000"]
# Threaded workers (gthread): a bundle download streams for as long as the device's link needs and
# holds its thread, not a whole process. Each thread keeps its own database connection (CONN_MAX_AGE),
# so workers x threads x replicas must fit PostgreSQL's max_connections (or a pgbouncer in front).
workers = env.integer("GUNICORN_WORKERS", (os.cpu_count() or 1) + 1, minimum=1, maximum=256)
threads = env.integer("GUNICORN_THREADS", 4, minimum=1, maximum=64)
# A bundle upload of REGISTRY_MAX_UPLOAD_BYTES over a slow CI link, or a large download, takes a while.
timeout = env.integer("GUNICORN_TIMEOUT", 120, minimum=10, maximum=3600)
# Kubernetes sends SIGTERM and waits terminationGracePeriodSeconds (60 in deploy/kubernetes): finish within it.
graceful_timeout = env.integer("GUNICORN_GRACEFUL_TIMEOUT", 50, minimum=1, maximum=3600)
keepalive = env.integer("GUNICORN_KEEPALIVE", 5, minimum=1, maximum=300)
# Recycle workers now and then, so a slow leak never takes a process down; jitter spreads the restarts.
max_requests = env.integer("GUNICORN_MAX_REQUESTS", 5000, minimum=0)
max_requests_jitter = max_requests // 10
# Only the TLS proxy in front may set X-Forwarded-*; a comma-separated list of its addresses.
forwarded_allow_ips = env.string("GUNICORN_FORWARDED_ALLOW_IPS", "127.0.0.1") or "127.0.0.1"
# Worker heartbeat files in memory: a container's /tmp may be an overlay on a slow disk.
worker_tmp_dir = "/dev/shm" if Path("/dev/shm").is_dir() else None  # noqa: S108 - gunicorn's advice
accesslog = "-" if env.boolean("GUNICORN_ACCESS_LOG", False) else None
errorlog = "-"
loglevel = (env.string("LOG_LEVEL", "INFO") or "INFO").lower()
proc_name = "edgefleet-web"


def on_starting(server: Any) -> None:
    # Files left by an earlier run would be added to this run's counters.
    directory = Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])
    if directory.exists():
        for entry in directory.iterdir():
            if entry.is_dir():
                shutil.rmtree(entry)
            else:
                entry.unlink()
    directory.mkdir(parents=True, exist_ok=True)


def child_exit(server: Any, worker: Any) -> None:
    multiprocess.mark_process_dead(worker.pid)

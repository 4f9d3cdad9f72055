"""The web process's probes: liveness touches nothing, readiness names what is missing."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from django.db.migrations.executor import MigrationExecutor
from django.db.migrations.migration import Migration
from django.test import Client

from core import health
from core.metrics import exposition
from fleet import tasks
from tests.paths import ROOT


@pytest.fixture
def listening() -> Iterator[str]:
    """A port that accepts TCP connections, standing in for a broker that is up."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        yield f"mqtt://127.0.0.1:{server.getsockname()[1]}"


@pytest.fixture
def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(autouse=True)
def _forget_migrations() -> Iterator[None]:
    health.migrations._applied = False
    yield
    health.migrations._applied = False


def test_liveness_answers_without_touching_the_database(client: Client) -> None:
    # No django_db mark: pytest-django fails any query.
    answer = client.get("/healthz")
    assert answer.status_code == 200 and answer.json() == {"status": "ok"}


@pytest.mark.django_db
def test_readiness_passes_when_every_dependency_answers(client: Client, settings: Any, listening: str) -> None:
    settings.MQTT_URL = listening
    answer = client.get("/readyz")
    assert answer.status_code == 200, answer.json()
    body = answer.json()
    assert body["status"] == "ready"
    assert set(body["checks"]) == {"database", "migrations", "task_queue", "mqtt"}
    assert body["checks"]["migrations"]["detail"] == "all applied"
    assert answer["Cache-Control"] == "no-store"


@pytest.mark.django_db
def test_readiness_fails_and_names_the_broker_that_does_not_answer(
    client: Client, settings: Any, closed_port: int
) -> None:
    settings.MQTT_URL = f"mqtt://127.0.0.1:{closed_port}"
    answer = client.get("/readyz")
    assert answer.status_code == 503
    checks = answer.json()["checks"]
    assert checks["mqtt"]["ok"] is False and "ConnectionRefused" in checks["mqtt"]["detail"]
    assert checks["database"]["ok"] is True


@pytest.mark.django_db
def test_readiness_fails_while_a_migration_is_unapplied(client: Client, settings: Any, listening: str) -> None:
    settings.MQTT_URL = listening
    pending = Migration("0099_expand", "fleet")
    with mock.patch.object(MigrationExecutor, "migration_plan", autospec=True, return_value=[(pending, False)]):
        answer = client.get("/readyz")
    assert answer.status_code == 503
    assert answer.json()["checks"]["migrations"]["detail"] == "RuntimeError: 1 unapplied: fleet.0099_expand"
    # Once applied, the answer is remembered: the graph is not loaded on every probe.
    assert client.get("/readyz").status_code == 200
    with mock.patch.object(MigrationExecutor, "migration_plan", autospec=True) as plan:
        assert client.get("/readyz").status_code == 200
    plan.assert_not_called()


@pytest.mark.django_db
def test_readiness_checks_only_what_readiness_checks_names(client: Client, settings: Any, closed_port: int) -> None:
    settings.MQTT_URL = f"mqtt://127.0.0.1:{closed_port}"
    settings.READINESS_CHECKS = ["database", "migrations"]
    answer = client.get("/readyz")
    assert answer.status_code == 200 and set(answer.json()["checks"]) == {"database", "migrations"}


@pytest.mark.integration
def test_the_task_queue_check_reaches_redis_and_reports_one_that_is_down(settings: Any, closed_port: int) -> None:
    if not _answers(6379):
        pytest.skip("no Redis on 127.0.0.1:6379")
    settings.CELERY_BROKER_URL = "redis://127.0.0.1:6379/15"
    [up] = health.run(["task_queue"])
    assert up.ok, up.detail
    settings.CELERY_BROKER_URL = f"redis://127.0.0.1:{closed_port}/15"
    settings.HEALTH_CHECK_TIMEOUT_S = 1
    [down] = health.run(["task_queue"])
    assert not down.ok and down.seconds < 5


def test_an_unknown_readiness_check_stops_the_start(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", "import config.settings"],
        cwd=ROOT,
        env={**os.environ, "EDGEFLEET_DATA_DIR": str(tmp_path), "READINESS_CHECKS": "database,cache"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0 and "READINESS_CHECKS" in result.stderr and "cache" in result.stderr


@pytest.mark.django_db
def test_requests_are_counted_by_view_and_status(client: Client) -> None:
    def count() -> float:
        for line in exposition().decode().splitlines():
            if line.startswith('edgefleet_http_requests_total{method="GET",status="200",view="healthz"}'):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    before = count()
    client.get("/healthz")
    client.get("/healthz")
    assert count() == before + 2
    text = exposition().decode()
    assert 'edgefleet_http_request_duration_seconds_count{method="GET",view="healthz"}' in text
    assert "process_resident_memory_bytes" in text


@pytest.mark.django_db
def test_metrics_serve_the_process_metrics_after_the_fleets(client: Client) -> None:
    text = client.get("/metrics").content.decode()
    assert text.index("edgefleet_ingest_records_total") < text.index("process_cpu_seconds_total")


@pytest.mark.django_db
def test_tasks_are_counted_by_name_and_state() -> None:
    name = "fleet.tasks.mark_silent_devices_offline"
    line = f'edgefleet_celery_tasks_total{{state="SUCCESS",task="{name}"}}'

    def count() -> float:
        found = [ln for ln in exposition().decode().splitlines() if ln.startswith(line)]
        return float(found[0].rsplit(" ", 1)[1]) if found else 0.0

    before = count()
    tasks.mark_silent_devices_offline.delay()
    assert count() == before + 1
    assert f'edgefleet_celery_task_duration_seconds_count{{task="{name}"}}' in exposition().decode()


MULTIPROCESS = """
import os, sys
from multiprocessing import get_context
from core import metrics

def serve(n):
    for _ in range(n):
        metrics.HTTP_REQUESTS.labels("healthz", "GET", "200").inc()

if __name__ == "__main__":
    children = [get_context("fork").Process(target=serve, args=(n,)) for n in (3, 4)]
    for child in children:
        child.start()
    for child in children:
        child.join()
    sys.stdout.write(metrics.exposition().decode())
"""


def test_with_a_multiprocess_directory_a_scrape_adds_up_every_child(tmp_path: Path) -> None:
    script = tmp_path / "children.py"
    script.write_text(MULTIPROCESS)
    directory = tmp_path / "prometheus"
    directory.mkdir()
    result = subprocess.run(
        [sys.executable, str(script)],
        cwd=ROOT,
        env={
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "DJANGO_SETTINGS_MODULE": "config.settings",
            "EDGEFLEET_DATA_DIR": str(tmp_path),
            "PROMETHEUS_MULTIPROC_DIR": str(directory),
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert 'edgefleet_http_requests_total{method="GET",status="200",view="healthz"} 7.0' in result.stdout
    # The children have exited: only live processes' process_* series are exported, each with its pid.
    memory = [line for line in result.stdout.splitlines() if line.startswith("process_resident_memory_bytes{")]
    assert len(memory) == 1 and 'pid="' in memory[0]


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.mark.django_db
def test_probes_answer_a_host_that_allowed_hosts_does_not_list(client: Client, settings: Any, listening: str) -> None:
    # Kubernetes and Prometheus address a pod by its IP.
    settings.ALLOWED_HOSTS = ["fleet.example.com"]
    settings.MQTT_URL = listening
    assert client.get("/healthz", HTTP_HOST="10.1.2.3:8000").status_code == 200
    assert client.get("/readyz", HTTP_HOST="10.1.2.3:8000").status_code == 200
    assert client.get("/metrics", HTTP_HOST="10.1.2.3:8000").status_code == 200
    # Everything else is still refused.
    assert client.get("/api/v1/sites/", HTTP_HOST="10.1.2.3:8000").status_code == 400

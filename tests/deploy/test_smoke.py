"""The production topology of deploy/compose, brought up here from the same commands, and smoke-tested.

No container images can be pulled on CI, so the engines are the machine's own:
PostgreSQL on 127.0.0.1:5432 (a fresh database), Redis on 127.0.0.1:6379 (one
database of its own) and a private Mosquitto running deploy/compose/mosquitto.conf
with dynamic security (its TLS listener left out: tests/brokers.py). The
processes are the compose file's commands (gunicorn with deploy/gunicorn.conf.py,
the bridge, a prefork Celery worker, the beat) in production mode, with every
secret from a file, after the release steps (migrate, collectstatic,
broker_bootstrap, a signing key). Then: every probe, every process's /metrics,
an API call with a token, a device enrolled through the API (its broker
account made by the web process) whose status the bridge stores, and a clean
stop on SIGTERM.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import psutil
import pytest
import yaml
from celery import Celery
from paho.mqtt.enums import CallbackAPIVersion

from agent.kernel import protocol
from tests.brokers import RunningBroker, free_port, mosquitto_with_dynsec
from tests.paths import ROOT

pytestmark = pytest.mark.integration

DEPLOY = ROOT / "deploy"
BIN = Path(sys.executable).parent
POSTGRES = ("127.0.0.1", 5432)
REDIS_URL = "redis://127.0.0.1:6379/13"
HOST = "fleet.test"
STARTUP_S = 60


def answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def http(url: str, *, data: dict[str, Any] | None = None, **headers: str) -> tuple[int, str]:
    body = json.dumps(data).encode() if data is not None else None
    if body is not None:
        headers.setdefault("Content-Type", "application/json")
    request = urllib.request.Request(url, data=body, headers=headers)  # noqa: S310 - local URLs
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:  # noqa: S310
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()
    except OSError as error:
        return 0, str(error)


@dataclass
class Stack:
    root: Path
    env: dict[str, str]
    broker: RunningBroker
    web: str = ""
    probes: dict[str, str] = field(default_factory=dict)
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    api_token: str = ""
    metrics_token: str = ""

    def log(self, name: str) -> str:
        path = self.root / f"{name}.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def manage(self, *commands: list[str]) -> list[str]:
        """Run management commands side by side (each start costs seconds); their outputs, in order."""
        running = [
            subprocess.Popen(
                [sys.executable, "manage.py", *args],
                cwd=ROOT,
                env=self.env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for args in commands
        ]
        outputs = []
        for args, process in zip(commands, running, strict=True):
            out, err = process.communicate(timeout=120)
            assert process.returncode == 0, f"manage.py {' '.join(args)}: {err[-3000:]}"
            outputs.append(out)
        return outputs

    def start(self, name: str, command: list[str], **extra: str) -> None:
        executable = {"python": sys.executable, "gunicorn": str(BIN / "gunicorn"), "celery": str(BIN / "celery")}
        argv = [executable.get(command[0], command[0]), *command[1:]]
        log = (self.root / f"{name}.log").open("wb")
        self.processes[name] = subprocess.Popen(
            argv, cwd=ROOT, env={**self.env, **extra}, stdout=log, stderr=subprocess.STDOUT
        )

    def wait_ok(self, url: str, name: str, **headers: str) -> str:
        deadline = time.monotonic() + STARTUP_S
        status, body = 0, ""
        while time.monotonic() < deadline:
            if self.processes[name].poll() is not None:
                pytest.fail(f"{name} exited with {self.processes[name].returncode}:\n{self.log(name)}")
            status, body = http(url, **headers)
            if status == 200:
                return body
            time.sleep(0.2)
        pytest.fail(f"{url} still answers {status} {body[:500]}:\n{self.log(name)}")

    def api(self, path: str, data: dict[str, Any] | None = None, token: str | None = None) -> tuple[int, Any]:
        headers = {"Host": HOST, "X-Forwarded-Proto": "https"}
        if token or self.api_token:
            headers["Authorization"] = f"Bearer {token or self.api_token}"
        status, body = http(f"{self.web}{path}", data=data, **headers)
        return status, (json.loads(body) if body.startswith(("{", "[")) else body)


SIGN_UP = """
from django.core.management import call_command
call_command("createsuperuser", interactive=False, username="ops", email="ops@example.com", verbosity=0)
call_command("api_token", "create", "--user", "ops", "--name", "smoke", "--scope", "admin", "--scope", "fleet")
"""


def compose_commands() -> dict[str, list[str]]:
    services = yaml.safe_load((DEPLOY / "compose" / "compose.yaml").read_text())["services"]
    return {name: list(services[name]["command"]) for name in ("web", "bridge", "worker", "beat")}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    psycopg = pytest.importorskip("psycopg")
    for name, (host, port) in {"PostgreSQL": POSTGRES, "Redis": ("127.0.0.1", 6379)}.items():
        if not answers(host, port):
            pytest.skip(f"no {name} on {host}:{port}")
    root = tmp_path_factory.mktemp("smoke")
    database = f"edgefleet_smoke_{secrets.token_hex(4)}"
    with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{database}"')
    try:
        with mosquitto_with_dynsec(root, base_config=DEPLOY / "compose" / "mosquitto.conf") as broker:
            stack = Stack(root, {}, broker)
            yield from _run(stack, database)
    finally:
        with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


def _run(stack: Stack, database: str) -> Iterator[Stack]:
    root = stack.root
    secrets_dir = root / "secrets"
    secrets_dir.mkdir()
    stack.metrics_token = secrets.token_hex(16)
    values = {
        "secret_key": secrets.token_urlsafe(50),
        "database_url": f"postgres://postgres@127.0.0.1:5432/{database}",
        "celery_broker_url": REDIS_URL,
        "bridge_password": secrets.token_urlsafe(16),
        "broker_admin_password": stack.broker.admin_password,
        "metrics_token": stack.metrics_token,
    }
    for name, value in values.items():
        (secrets_dir / name).write_text(value + "\n")
    # The compose file's environment, with this machine's addresses.
    stack.env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "MQTT_", "CELERY_", "EDGEFLEET_"))},
        "PYTHONUNBUFFERED": "1",
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "EDGEFLEET_ENV": "production",
        "EDGEFLEET_DATA_DIR": str(root / "data"),
        "STATIC_ROOT": str(root / "static"),
        "ALLOWED_HOSTS": HOST,
        "CSRF_TRUSTED_ORIGINS": f"https://{HOST}",
        "BEHIND_TLS_PROXY": "true",
        "LOG_FORMAT": "json",
        "SECRET_KEY_FILE": str(secrets_dir / "secret_key"),
        "DATABASE_URL_FILE": str(secrets_dir / "database_url"),
        "CELERY_BROKER_URL_FILE": str(secrets_dir / "celery_broker_url"),
        "MQTT_URL": stack.broker.url,
        "DEVICE_MQTT_URL": stack.broker.url,
        "MQTT_USERNAME": "edgefleet-bridge",
        "MQTT_PASSWORD_FILE": str(secrets_dir / "bridge_password"),
        "MQTT_SHARED_GROUP": f"smoke-{secrets.token_hex(4)}",
        "BROKER_PROVISIONER": "dynsec",
        "BROKER_ADMIN_USERNAME": stack.broker.admin_username,
        "BROKER_ADMIN_PASSWORD_FILE": str(secrets_dir / "broker_admin_password"),
        "METRICS_TOKEN_FILE": str(secrets_dir / "metrics_token"),
        "GUNICORN_WORKERS": "2",
    }
    (root / "data").mkdir()
    # The release steps (compose's `release` service; the operator makes the signing key once),
    # side by side where they do not depend on each other.
    stack.manage(["migrate", "--noinput", "--verbosity", "0"], ["collectstatic", "--noinput", "--verbosity", "0"])
    _, _, token = stack.manage(
        ["broker_bootstrap"],
        ["signing_key", "create"],
        # An operator's account and an API token, as an admin makes them (one start instead of two).
        ["shell", "-c", SIGN_UP],
    )
    stack.api_token = token.strip().splitlines()[-1]

    commands = compose_commands()
    web_port = free_port()
    stack.web = f"http://127.0.0.1:{web_port}"
    beat = [re.sub(r"^--schedule=.*", f"--schedule={root / 'beat-schedule'}", arg) for arg in commands["beat"]]
    try:
        stack.start(
            "web", commands["web"], GUNICORN_BIND=f"127.0.0.1:{web_port}", PROMETHEUS_MULTIPROC_DIR=str(root / "pw")
        )
        for name, command, extra in (
            ("bridge", commands["bridge"], {}),
            ("worker", commands["worker"], {"PROMETHEUS_MULTIPROC_DIR": str(root / "pworker")}),
            ("beat", beat, {}),
        ):
            port = free_port()
            stack.probes[name] = f"http://127.0.0.1:{port}"
            stack.start(name, command, PROBE_PORT=str(port), PROBE_ADDRESS="127.0.0.1", **extra)
        yield stack
    finally:
        for process in stack.processes.values():
            if process.poll() is None:
                process.kill()
                process.wait(10)


def test_every_process_is_live_then_ready(stack: Stack) -> None:
    assert json.loads(stack.wait_ok(f"{stack.web}/healthz", "web")) == {"status": "ok"}
    ready = json.loads(stack.wait_ok(f"{stack.web}/readyz", "web"))
    assert {name for name, check in ready["checks"].items() if check["ok"]} == {
        "database",
        "migrations",
        "task_queue",
        "mqtt",
    }
    for name, url in stack.probes.items():
        stack.wait_ok(f"{url}/healthz", name)
        ready = json.loads(stack.wait_ok(f"{url}/readyz", name))
        assert ready["status"] == "ready", (name, ready)
    assert "subscribed" in json.loads(http(f"{stack.probes['bridge']}/readyz")[1])["checks"]


def test_a_signed_in_api_call_and_a_device_enrolled_through_the_broker(stack: Stack) -> None:
    stack.wait_ok(f"{stack.probes['bridge']}/readyz", "bridge")
    assert stack.api("/api/v1/sites/", token="eft_wrong")[0] == 401
    status, site = stack.api("/api/v1/sites/", {"slug": "plant-a", "name": "Plant A", "timezone": "UTC"})
    assert status == 201, site
    status, token = stack.api("/api/v1/sites/plant-a/enrollment-tokens/", {})
    assert status == 201, token
    # The web process creates the device's account at the broker (dynamic security) before it answers.
    status, answer = stack.api("/api/v1/enroll", {"token": token["token"], "name": "cam-1"}, token="")
    assert status == 201, answer
    identity = protocol.EnrollmentAnswer.model_validate(answer)
    device = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=identity.device_id)
    device.username_pw_set(identity.device_id, identity.secret)
    device.connect(stack.broker.host, stack.broker.port)
    device.loop_start()
    try:
        message = protocol.encode(protocol.Status(state="online", agent_version="0.1.0"))
        device.publish(protocol.topic(identity.device_id, "status"), message, qos=1, retain=True).wait_for_publish(10)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            status, body = stack.api(f"/api/v1/devices/{identity.device_id}/")
            if status == 200 and body["online"]:
                break
            time.sleep(0.3)
        assert status == 200 and body["online"] is True, (body, stack.log("bridge"))
    finally:
        device.loop_stop()
        device.disconnect()


def test_each_process_serves_its_own_metrics(stack: Stack) -> None:
    bearer = {"Authorization": f"Bearer {stack.metrics_token}"}
    assert http(f"{stack.web}/metrics")[0] == 401
    web = stack.wait_ok(f"{stack.web}/metrics", "web", **bearer)
    assert "edgefleet_devices" in web and "edgefleet_http_requests_total{" in web
    # gunicorn's workers add up through the multiprocess directory; process_* per live worker.
    assert len(set(re.findall(r'process_resident_memory_bytes\{pid="(\d+)"\}', web))) >= 1
    bridge = stack.wait_ok(f"{stack.probes['bridge']}/metrics", "bridge", **bearer)
    assert "edgefleet_bridge_connected 1.0" in bridge and "process_cpu_seconds_total" in bridge
    assert 'edgefleet_bridge_messages_total{kind="status"}' in bridge
    # A task sent as any process sends one; a prefork child runs it and the probe port counts it.
    Celery(broker=REDIS_URL).send_task("fleet.tasks.mark_silent_devices_offline")
    line = 'edgefleet_celery_tasks_total{state="SUCCESS",task="fleet.tasks.mark_silent_devices_offline"}'
    deadline = time.monotonic() + 30
    worker = ""
    while time.monotonic() < deadline and line not in worker:
        worker = stack.wait_ok(f"{stack.probes['worker']}/metrics", "worker", **bearer)
        time.sleep(0.3)
    assert line in worker, stack.log("worker")
    assert "edgefleet_celery_task_duration_seconds_bucket" in worker
    beat = stack.wait_ok(f"{stack.probes['beat']}/metrics", "beat", **bearer)
    assert "process_resident_memory_bytes" in beat


def test_the_processes_stop_cleanly_on_sigterm(stack: Stack) -> None:
    memory = {
        name: sum(p.memory_info().rss for p in [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(True)])
        for name, proc in stack.processes.items()
    }
    # Resident memory of each process with its children, for docs/operations.md ("Capacity").
    print("smoke memory MiB:", {name: round(rss / 2**20) for name, rss in memory.items()})
    for process in stack.processes.values():
        process.send_signal(signal.SIGTERM)
    for name, process in stack.processes.items():
        try:
            code = process.wait(60)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{name} ignored SIGTERM:\n{stack.log(name)}")
        assert code == 0, f"{name} exited with {code}:\n{stack.log(name)}"

"""The production topology of deploy/compose, run here from the same commands.

No container images can be pulled on CI, so the engines are the machine's own:
PostgreSQL on 127.0.0.1:5432 (a fresh database), Redis on 127.0.0.1:6379 (one
database of its own) and a private Mosquitto running deploy/compose/mosquitto.conf
with dynamic security (its TLS listener left out: tests/brokers.py). The
processes are the compose file's commands (gunicorn with deploy/gunicorn.conf.py,
the bridge, a prefork Celery worker, the beat) in production mode, with every
secret from a file, after the release steps (migrate, collectstatic,
broker_bootstrap, a signing key, an operator's API token).

The deploy smoke test, the process-fault suite, the scale-out test and the
fleet-scale benchmark all start it through ``production_stack``; any process
can be started again under another name (a second bridge or worker), killed
with SIGKILL and restarted from the same command.
"""

from __future__ import annotations

import contextlib
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
from urllib.parse import urlsplit

import psutil
import yaml

from tests.brokers import Mosquitto, RunningBroker, free_port, mosquitto_open, mosquitto_server
from tests.paths import ROOT

DEPLOY = ROOT / "deploy"
BIN = Path(sys.executable).parent
POSTGRES = ("127.0.0.1", 5432)
ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
HOST = "fleet.test"
STARTUP_S = 60
PROCESSES = ("web", "bridge", "worker", "beat")


class StackError(RuntimeError):
    """A process of the stack exited or did not answer in time; the message holds its log's tail."""


def answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def missing_services(redis_url: str = "redis://127.0.0.1:6379") -> str | None:
    """Why the stack cannot start here (a skip reason), or None."""
    redis = redis_url.split("//", 1)[1].split("/", 1)[0]
    host, _, port = redis.partition(":")
    for name, (h, p) in {"PostgreSQL": POSTGRES, "Redis": (host, int(port or 6379))}.items():
        if not answers(h, p):
            return f"no {name} on {h}:{p}"
    return None


def http(
    url: str, *, data: dict[str, Any] | None = None, timeout: float = 10, headers: dict[str, str] | None = None
) -> tuple[int, str]:
    headers = dict(headers or {})
    body = json.dumps(data).encode() if data is not None else None
    if body is not None:
        headers.setdefault("Content-Type", "application/json")
    request = urllib.request.Request(url, data=body, headers=headers)  # noqa: S310 - local URLs
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:  # noqa: S310
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()
    except OSError as error:
        return 0, str(error)


def compose_commands() -> dict[str, list[str]]:
    services = yaml.safe_load((DEPLOY / "compose" / "compose.yaml").read_text())["services"]
    return {name: list(services[name]["command"]) for name in PROCESSES}


SIGN_UP = """
from django.core.management import call_command
call_command("createsuperuser", interactive=False, username="ops", email="ops@example.com", verbosity=0)
call_command("api_token", "create", "--user", "ops", "--name", "stack", "--scope", "admin", "--scope", "fleet",
             "--scope", "publish", "--scope", "rollout")
"""


@dataclass
class Stack:
    root: Path
    env: dict[str, str]
    broker: RunningBroker
    database: str
    redis_url: str
    web: str = ""
    probes: dict[str, str] = field(default_factory=dict)
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    commands: dict[str, list[str]] = field(default_factory=dict)
    extras: dict[str, dict[str, str]] = field(default_factory=dict)
    api_token: str = ""
    metrics_token: str = ""
    database_host: str = POSTGRES[0]
    database_port: int = POSTGRES[1]
    mosquitto: Mosquitto | None = None
    """The broker's process: ``kill("broker")`` and ``restart("broker")`` reach it."""

    @property
    def database_url(self) -> str:
        return f"postgres://postgres@{self.database_host}:{self.database_port}/{self.database}"

    def log(self, name: str, tail: int = 3000) -> str:
        path = self.root / f"{name}.log"
        return path.read_text(errors="replace")[-tail:] if path.exists() else ""

    def manage(self, *commands: list[str], timeout: float = 120) -> list[str]:
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
            out, err = process.communicate(timeout=timeout)
            if process.returncode != 0:
                raise StackError(f"manage.py {' '.join(args)}: {err[-3000:]}")
            outputs.append(out)
        return outputs

    def start(self, name: str, command: list[str], **extra: str) -> None:
        """Start (or start again, after ``kill``) one process; its output goes to ``<root>/<name>.log``."""
        executable = {"python": sys.executable, "gunicorn": str(BIN / "gunicorn"), "celery": str(BIN / "celery")}
        argv = [executable.get(command[0], command[0]), *command[1:]]
        self.commands[name], self.extras[name] = command, extra
        with (self.root / f"{name}.log").open("ab") as log:
            self.processes[name] = subprocess.Popen(
                argv, cwd=ROOT, env={**self.env, **extra}, stdout=log, stderr=subprocess.STDOUT
            )

    def start_role(self, role: str, name: str | None = None) -> str:
        """Another process of a role ("bridge", "worker", "beat") under its own name and probe port."""
        name = name or role
        command = compose_commands()[role]
        extra: dict[str, str] = {}
        if role == "beat":
            command = [re.sub(r"^--schedule=.*", f"--schedule={self.root / f'{name}-schedule'}", a) for a in command]
        if role == "worker":
            # Celery names a worker after its host: two on one host need their own names.
            command = [*command, f"--hostname={name}@%h"]
            extra["PROMETHEUS_MULTIPROC_DIR"] = str(self.root / f"prometheus-{name}")
            Path(extra["PROMETHEUS_MULTIPROC_DIR"]).mkdir(exist_ok=True)
        port = free_port()
        self.probes[name] = f"http://127.0.0.1:{port}"
        self.start(name, command, PROBE_PORT=str(port), PROBE_ADDRESS="127.0.0.1", **extra)
        return name

    def kill(self, name: str) -> None:
        """SIGKILL the process and every child it has (a prefork worker's pool, gunicorn's workers)."""
        if name == "broker" and self.mosquitto is not None:
            self.mosquitto.kill()
            return
        process = self.processes[name]
        with contextlib.suppress(psutil.NoSuchProcess):
            for child in psutil.Process(process.pid).children(recursive=True):
                with contextlib.suppress(psutil.NoSuchProcess):
                    child.kill()
        process.kill()
        process.wait(10)

    def restart(self, name: str) -> None:
        if name == "broker" and self.mosquitto is not None:
            # Same port, same persistence file and dynamic-security state.
            self.mosquitto.kill()
            self.mosquitto.start()
            return
        if self.processes[name].poll() is None:
            self.kill(name)
        self.start(name, self.commands[name], **self.extras[name])

    def terminate(self, name: str, timeout: float = 60, *, signalled: bool = False) -> int:
        process = self.processes[name]
        if not signalled:
            process.send_signal(signal.SIGTERM)
        try:
            return process.wait(timeout)
        except subprocess.TimeoutExpired as error:
            raise StackError(f"{name} ignored SIGTERM:\n{self.log(name)}") from error

    def rss_mib(self, name: str) -> float:
        """Resident memory of a process with its children (gunicorn's and the pool's workers)."""
        root = psutil.Process(self.processes[name].pid)
        return sum(p.memory_info().rss for p in [root, *root.children(recursive=True)]) / 2**20

    def cpu_seconds(self, name: str) -> float:
        root = psutil.Process(self.processes[name].pid)
        total = 0.0
        for process in [root, *root.children(recursive=True)]:
            with contextlib.suppress(psutil.NoSuchProcess):
                times = process.cpu_times()
                total += times.user + times.system
        return total

    def wait_ok(self, url: str, name: str, *, timeout: float = STARTUP_S, headers: dict[str, str] | None = None) -> str:
        deadline = time.monotonic() + timeout
        status, body = 0, ""
        while time.monotonic() < deadline:
            if self.processes[name].poll() is not None:
                raise StackError(f"{name} exited with {self.processes[name].returncode}:\n{self.log(name)}")
            status, body = http(url, headers=headers)
            if status == 200:
                return body
            time.sleep(0.2)
        raise StackError(f"{url} still answers {status} {body[:500]}:\n{self.log(name)}")

    def wait_ready(self, *names: str, timeout: float = STARTUP_S) -> None:
        """Every named process (all by default) answers ready on its probe."""
        for name in names or tuple(self.processes):
            url = self.web if name == "web" else self.probes[name]
            self.wait_ok(f"{url}/readyz", name, timeout=timeout)

    def api(
        self, path: str, data: dict[str, Any] | None = None, token: str | None = None, timeout: float = 10
    ) -> tuple[int, Any]:
        headers = {"Host": HOST, "X-Forwarded-Proto": "https"}
        if token or (token is None and self.api_token):
            headers["Authorization"] = f"Bearer {token or self.api_token}"
        status, body = http(f"{self.web}{path}", data=data, timeout=timeout, headers=headers)
        return status, (json.loads(body) if body.startswith(("{", "[")) else body)


@contextlib.contextmanager
def production_stack(
    root: Path,
    *,
    processes: tuple[str, ...] = PROCESSES,
    redis_url: str = "redis://127.0.0.1:6379/13",
    env: dict[str, str] | None = None,
    gunicorn_workers: int = 2,
    admin_dsn: str = ADMIN_DSN,
    broker_auth: bool = True,
) -> Iterator[Stack]:
    """A fresh database, a private Mosquitto and the named processes; everything removed on exit.

    ``admin_dsn`` (a superuser's ``postgresql://`` URL) puts the database on another cluster, e.g. a
    private one a test may restart. ``broker_auth=False`` runs the broker without dynamic security and
    the control plane without a broker provisioner (``BROKER_PROVISIONER=none``): for measurements of
    everything else at a fleet size where the plugin's own cost would hide it; never for a test of
    access control.
    """
    import psycopg

    database = f"edgefleet_stack_{secrets.token_hex(4)}"
    server = urlsplit(admin_dsn)
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{database}"')
    try:
        config = DEPLOY / "compose" / "mosquitto.conf"
        running = mosquitto_server(root, base_config=config) if broker_auth else mosquitto_open(root, config)
        with running as mosquitto:
            stack = Stack(root, {}, mosquitto.broker, database, redis_url)
            stack.database_host, stack.database_port = server.hostname or POSTGRES[0], server.port or 5432
            stack.mosquitto = mosquitto
            try:
                extra = {} if broker_auth else {"BROKER_PROVISIONER": "none"}
                _release(stack, {**extra, **(env or {})}, gunicorn_workers)
                for name in processes:
                    if name == "web":
                        _start_web(stack)
                    else:
                        stack.start_role(name)
                yield stack
            finally:
                for name, process in stack.processes.items():
                    if process.poll() is None:
                        stack.kill(name)
    finally:
        with psycopg.connect(admin_dsn, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


def _release(stack: Stack, env: dict[str, str], gunicorn_workers: int) -> None:
    root = stack.root
    secrets_dir = root / "secrets"
    secrets_dir.mkdir()
    stack.metrics_token = secrets.token_hex(16)
    values = {
        "secret_key": secrets.token_urlsafe(50),
        "database_url": stack.database_url,
        "celery_broker_url": stack.redis_url,
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
        "ALLOWED_HOSTS": f"{HOST},127.0.0.1",
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
        "MQTT_SHARED_GROUP": f"stack-{secrets.token_hex(4)}",
        "BROKER_PROVISIONER": "dynsec",
        "BROKER_ADMIN_USERNAME": stack.broker.admin_username,
        "BROKER_ADMIN_PASSWORD_FILE": str(secrets_dir / "broker_admin_password"),
        "METRICS_TOKEN_FILE": str(secrets_dir / "metrics_token"),
        "GUNICORN_WORKERS": str(gunicorn_workers),
        **env,
    }
    (root / "data").mkdir()
    # The release steps (compose's `release` service; the operator makes the signing key once),
    # side by side where they do not depend on each other.
    stack.manage(["migrate", "--noinput", "--verbosity", "0"], ["collectstatic", "--noinput", "--verbosity", "0"])
    steps = [["signing_key", "create"], ["shell", "-c", SIGN_UP]]
    if stack.env["BROKER_PROVISIONER"] == "dynsec":
        steps.append(["broker_bootstrap"])
    token = stack.manage(*steps)[1]
    stack.api_token = token.strip().splitlines()[-1]


def _start_web(stack: Stack) -> None:
    port = free_port()
    stack.web = f"http://127.0.0.1:{port}"
    multiproc = stack.root / "prometheus-web"
    multiproc.mkdir(exist_ok=True)
    stack.start(
        "web", compose_commands()["web"], GUNICORN_BIND=f"127.0.0.1:{port}", PROMETHEUS_MULTIPROC_DIR=str(multiproc)
    )

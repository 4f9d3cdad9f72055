"""The control-plane image itself: each process as a container, probed, scraped and stopped.

Opt-in: set ``EDGEFLEET_TEST_IMAGE`` to an image built from deploy/Dockerfile (and
``DOCKER_HOST`` if the daemon is not the default one). The containers use the
host's network and this machine's PostgreSQL, Redis and Mosquitto, with the
compose file's hardening: read-only root, a tmpfs /tmp, secrets as files.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator

import pytest

from tests.brokers import free_port
from tests.stack import answers, compose_commands, http

pytestmark = pytest.mark.integration

IMAGE = os.environ.get("EDGEFLEET_TEST_IMAGE", "")


def docker(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def containers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    if not IMAGE:
        pytest.skip("set EDGEFLEET_TEST_IMAGE to an image built from deploy/Dockerfile")
    if shutil.which("docker") is None or docker("image", "inspect", IMAGE).returncode != 0:
        pytest.skip(f"docker or the image {IMAGE} is not available")
    for port in (5432, 6379, 1883):
        if not answers("127.0.0.1", port):
            pytest.skip(f"nothing answers on 127.0.0.1:{port}")
    psycopg = pytest.importorskip("psycopg")
    database = f"edgefleet_image_{secrets.token_hex(4)}"
    folder = tmp_path_factory.mktemp("image-secrets")
    token = secrets.token_hex(16)
    for name, value in {
        "secret_key": secrets.token_urlsafe(50),
        "database_url": f"postgres://postgres@127.0.0.1:5432/{database}",
        "metrics_token": token,
    }.items():
        (folder / name).write_text(value + "\n")
        (folder / name).chmod(0o644)  # the containers run as uid 10001
    folder.chmod(0o755)
    common = [
        *("--network", "host", "--read-only", "--tmpfs", "/tmp", "-v", f"{folder}:/run/secrets:ro"),
        *("-e", "SECRET_KEY_FILE=/run/secrets/secret_key", "-e", "DATABASE_URL_FILE=/run/secrets/database_url"),
        *("-e", "METRICS_TOKEN_FILE=/run/secrets/metrics_token", "-e", "CELERY_BROKER_URL=redis://127.0.0.1:6379/12"),
        *("-e", "MQTT_URL=mqtt://127.0.0.1:1883", "-e", "BROKER_PROVISIONER=none"),
        *("-e", f"MQTT_SHARED_GROUP=image-{secrets.token_hex(4)}", "-e", "ALLOWED_HOSTS=fleet.test"),
    ]
    commands = compose_commands()
    beat = [arg if not arg.startswith("--schedule=") else "--schedule=/tmp/beat-schedule" for arg in commands["beat"]]
    ports = {name: free_port() for name in ("web", "bridge", "worker", "beat")}
    names = {name: f"edgefleet-test-{name}-{secrets.token_hex(3)}" for name in ports}
    with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{database}"')
    try:
        migrate = docker("run", "--rm", *common, IMAGE, "python", "manage.py", "migrate", "--noinput", "-v", "0")
        assert migrate.returncode == 0, migrate.stderr[-3000:]
        for name, command in (("web", commands["web"]), ("bridge", commands["bridge"]), ("beat", beat)):
            extra = [f"GUNICORN_BIND=127.0.0.1:{ports[name]}"] if name == "web" else [f"PROBE_PORT={ports[name]}"]
            started = docker("run", "-d", "--name", names[name], *common, "-e", extra[0], IMAGE, *command)
            assert started.returncode == 0, started.stderr
        # The prefork children count tasks into files there, as in compose.
        multiprocess = ["-e", f"PROBE_PORT={ports['worker']}", "-e", "PROMETHEUS_MULTIPROC_DIR=/tmp/prometheus"]
        started = docker("run", "-d", "--name", names["worker"], *common, *multiprocess, IMAGE, *commands["worker"])
        assert started.returncode == 0, started.stderr
        urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
        yield {"token": token, **urls, **{f"container:{name}": container for name, container in names.items()}}
    finally:
        for container in names.values():
            docker("rm", "-f", container)
        with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


def wait_ready(url: str) -> dict[str, object]:
    deadline = time.monotonic() + 180
    status, body = 0, ""
    while time.monotonic() < deadline:
        status, body = http(url)
        if status == 200:
            answer: dict[str, object] = json.loads(body)
            return answer
        time.sleep(0.5)
    pytest.fail(f"{url}: {status} {body[:500]}")


def test_every_container_becomes_ready_serves_its_metrics_and_stops_cleanly(containers: dict[str, str]) -> None:
    for name in ("web", "bridge", "worker", "beat"):
        assert wait_ready(f"{containers[name]}/readyz")["status"] == "ready", name
        assert http(f"{containers[name]}/metrics")[0] == 401
        status, text = http(f"{containers[name]}/metrics", headers={"Authorization": f"Bearer {containers['token']}"})
        assert status == 200 and "process_" in text, name
    assert (
        "edgefleet_bridge_connected 1.0"
        in http(f"{containers['bridge']}/metrics", headers={"Authorization": f"Bearer {containers['token']}"})[1]
    )
    # The root file system is read-only and the processes are not root.
    web = containers["container:web"]
    assert docker("exec", web, "sh", "-c", "touch /app/x").returncode != 0
    assert docker("exec", web, "id", "-u").stdout.strip() == "10001"
    for name in ("web", "bridge", "worker", "beat"):
        container = containers[f"container:{name}"]
        assert docker("stop", "-t", "60", container, timeout=90).returncode == 0
        code = docker("inspect", "-f", "{{.State.ExitCode}}", container).stdout.strip()
        assert code == "0", f"{name} exited with {code}: {docker('logs', container).stderr[-2000:]}"


def test_the_image_holds_the_static_files_the_proxy_serves(containers: dict[str, str]) -> None:
    listing = docker("run", "--rm", IMAGE, "ls", "/app/staticfiles/vendor/htmx")
    assert listing.returncode == 0 and "htmx.min.js" in listing.stdout

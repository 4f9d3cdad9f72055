"""deploy/ checked by the tools that run it: compose, Kubernetes schemas, systemd, Caddy, gunicorn.

Each check skips, naming the tool, where the tool is not installed; CI installs them
(docker-compose and caddy from Debian, kubernetes-validate from the dev extra).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.paths import ROOT

DEPLOY = ROOT / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
# The oldest Kubernetes release still supported upstream when these were written.
KUBERNETES_VERSION = "1.30.0"
PROCESSES = ("web", "bridge", "worker", "beat")


def tool(*names: str) -> list[str]:
    for name in names:
        found = shutil.which(name)
        if found:
            return [found]
    pytest.skip(f"{' or '.join(names)} is not installed")


def run(command: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=120, **kwargs)


def compose_file() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((DEPLOY / "compose" / "compose.yaml").read_text())
    return loaded


def kubernetes_documents() -> list[tuple[Path, dict[str, Any]]]:
    return [
        (path, doc)
        for path in sorted(KUBERNETES.glob("*.yaml"))
        if path.name != "kustomization.yaml"
        for doc in yaml.safe_load_all(path.read_text())
        if doc
    ]


# --- compose ---------------------------------------------------------------------------------


def test_the_compose_file_is_valid_for_docker_compose() -> None:
    compose = shutil.which("docker-compose")
    if compose is None:
        docker = shutil.which("docker")
        if docker is None or run([docker, "compose", "version"]).returncode != 0:
            pytest.skip("neither docker-compose nor the docker compose plugin is installed")
        command = [docker, "compose"]
    else:
        command = [compose]
    result = run([*command, "-f", str(DEPLOY / "compose" / "compose.yaml"), "config", "-q"])
    assert result.returncode == 0, result.stderr


def test_every_compose_process_is_probed_and_takes_its_secrets_from_files() -> None:
    services = compose_file()["services"]
    for name in PROCESSES:
        service = services[name]
        assert "healthcheck" in service, f"{name} has no health check"
        env = service["environment"]
        assert env["EDGEFLEET_ENV"] == "production"
        # No password in the environment: each one is a *_FILE under /run/secrets.
        for key, value in env.items():
            if re.search(r"PASSWORD|SECRET|TOKEN|DATABASE_URL", key):
                assert key.endswith("_FILE") and str(value).startswith("/run/secrets/"), (name, key)
    for path in ("web", "worker"):
        assert services[path]["environment"]["PROMETHEUS_MULTIPROC_DIR"], f"{path} runs several processes"


def test_the_compose_broker_listens_with_tls_and_dynamic_security() -> None:
    conf = (DEPLOY / "compose" / "mosquitto.conf").read_text()
    assert "listener 8883" in conf and "certfile /mosquitto/certs/broker.crt" in conf
    assert "allow_anonymous false" in conf and "mosquitto_dynamic_security.so" in conf
    assert compose_file()["services"]["mosquitto"]["ports"] == ["8883:8883"], "only TLS is published"


# --- Kubernetes --------------------------------------------------------------------------------


def test_the_kubernetes_manifests_match_the_api_schemas() -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is not installed")
    documents = kubernetes_documents()
    assert {doc["kind"] for _, doc in documents} >= {"Deployment", "StatefulSet", "Service", "ConfigMap", "Job"}
    for path, doc in documents:
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{path.name}: {doc['kind']}/{doc['metadata']['name']}: {exc.message}")


def test_the_kustomization_builds() -> None:
    kubectl = tool("kubectl")
    result = run([*kubectl, "kustomize", str(KUBERNETES)])
    assert result.returncode == 0, result.stderr
    kinds = [doc["kind"] for doc in yaml.safe_load_all(result.stdout) if doc]
    assert kinds.count("Deployment") == 4


def test_every_control_plane_container_has_probes_on_its_health_endpoints_and_resource_requests() -> None:
    deployments = {doc["metadata"]["name"]: doc for _, doc in kubernetes_documents() if doc["kind"] == "Deployment"}
    assert set(deployments) == set(PROCESSES)
    for name, deployment in deployments.items():
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        assert container["name"] == name
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert container["resources"]["requests"]["cpu"] and container["resources"]["requests"]["memory"]
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        if name != "beat":
            assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        port = container["livenessProbe"]["httpGet"]["port"]
        assert port in {p["name"] for p in container["ports"]}
    beat = deployments["beat"]["spec"]
    assert beat["replicas"] == 1 and beat["strategy"]["type"] == "Recreate", "never two beats"


def test_compose_and_kubernetes_run_the_same_commands() -> None:
    services = compose_file()["services"]
    deployments = {doc["metadata"]["name"]: doc for _, doc in kubernetes_documents() if doc["kind"] == "Deployment"}
    for name in ("web", "bridge", "worker"):
        container = deployments[name]["spec"]["template"]["spec"]["containers"][0]
        assert container["command"] == services[name]["command"], name


# --- systemd, Caddy, gunicorn, secrets ---------------------------------------------------------------


def test_the_systemd_units_verify(tmp_path: Path) -> None:
    analyze = tool("systemd-analyze")
    # systemd-analyze checks that each command exists: point the units at stand-ins.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("gunicorn", "python", "celery", "edgefleet-agent"):
        (bin_dir / name).write_text("#!/bin/sh\n")
        (bin_dir / name).chmod(0o755)
    units = []
    for unit in sorted([*DEPLOY.glob("systemd/*.service"), *DEPLOY.glob("systemd/*.target")]):
        text = unit.read_text().replace("/opt/edgefleet-server/venv/bin/", f"{bin_dir}/")
        text = text.replace("/opt/edgefleet/bin/", f"{bin_dir}/")
        target = tmp_path / unit.name.replace("@.", "@9101.")
        target.write_text(text)
        units.append(str(target))
    assert len(units) >= 6
    result = run([*analyze, "verify", *units], cwd=tmp_path)
    assert result.returncode == 0, result.stderr


def test_the_secrets_script_writes_every_secret_compose_names_and_certificates_for_both_hosts(tmp_path: Path) -> None:
    openssl = tool("openssl")
    copy = tmp_path / "compose"
    shutil.copytree(DEPLOY / "compose", copy)
    result = run(["sh", str(copy / "init-secrets.sh"), "fleet.test", "mqtt.test"])
    assert result.returncode == 0, result.stderr
    secrets = copy / "secrets"
    for entry in compose_file()["secrets"].values():
        path = copy / entry["file"]
        assert path.is_file() and path.stat().st_size > 0, entry["file"]
    assert (secrets / "database_url").read_text().startswith("postgres://edgefleet:")
    for name, host in (("web", "fleet.test"), ("mqtt", "mqtt.test")):
        verify = run([*openssl, "verify", "-CAfile", str(secrets / "ca.crt"), str(secrets / f"{name}.crt")])
        assert verify.returncode == 0, verify.stderr
        text = run([*openssl, "x509", "-in", str(secrets / f"{name}.crt"), "-noout", "-ext", "subjectAltName"])
        assert f"DNS:{host}" in text.stdout
    assert oct(secrets.stat().st_mode & 0o777) == "0o700"
    before = (secrets / "secret_key").read_text()
    assert run(["sh", str(copy / "init-secrets.sh"), "fleet.test", "mqtt.test"]).returncode == 0
    assert (secrets / "secret_key").read_text() == before, "a second run keeps what exists"


def test_the_caddyfile_adapts(tmp_path: Path) -> None:
    caddy = tool("caddy")
    result = run(
        [*caddy, "adapt", "--config", str(DEPLOY / "caddy" / "Caddyfile"), "--adapter", "caddyfile"],
        env={**os.environ, "EDGEFLEET_HOST": "fleet.test"},
    )
    assert result.returncode == 0, result.stderr
    assert '"fleet.test"' in result.stdout


def test_the_gunicorn_config_loads_the_application(tmp_path: Path) -> None:
    result = run(
        [sys.executable, "-m", "gunicorn", "--check-config", "-c", "deploy/gunicorn.conf.py", "config.wsgi"],
        cwd=ROOT,
        env={**os.environ, "EDGEFLEET_DATA_DIR": str(tmp_path), "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prom")},
    )
    assert result.returncode == 0, result.stderr + result.stdout

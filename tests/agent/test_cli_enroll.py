"""`edgefleet-agent enroll` and `status`, run as a real process against a live control plane."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from agent import config as agent_config
from agent.cli import Exit
from agent.kernel import protocol
from fleet.models import Device, EnrollmentToken, Site

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

AGENT = Path(sys.executable).with_name("edgefleet-agent")


def agent(*args: str) -> subprocess.CompletedProcess[str]:
    # The developer's own overrides must not leak into the process under test.
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFLEET_AGENT_")}
    return subprocess.run([str(AGENT), *args], capture_output=True, text=True, env=env, timeout=60)


def enroll(
    server: str, token: str, tmp_path: Path, *extra: str, name: str = "cam-1"
) -> subprocess.CompletedProcess[str]:
    return agent(
        "enroll",
        "--server",
        server,
        "--token",
        token,
        "--name",
        name,
        "--hardware-profile",
        "rpi5",
        "--config",
        str(tmp_path / "agent.toml"),
        "--data-dir",
        str(tmp_path / "data"),
        *extra,
    )


@pytest.fixture
def site(transactional_db: Any) -> Site:
    return Site.objects.create(slug="plant-a", name="Plant A")


def test_it_enrolls_and_writes_a_0600_config_for_the_new_device(live_server: Any, site: Site, tmp_path: Path) -> None:
    _, token = EnrollmentToken.issue(site)
    result = enroll(live_server.url, token, tmp_path, "--site", "plant-a", "--label", "line=3")
    assert result.returncode == 0, result.stderr
    device = Device.objects.get(site=site, name="cam-1")
    assert device.hardware_profile == "rpi5" and device.labels == {"line": "3"}
    path = tmp_path / "agent.toml"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    settings = agent_config.load(path, environ={})
    assert settings.device.id == device.device_id and settings.device.site == "plant-a"
    assert settings.server.url == live_server.url and settings.mqtt.url.startswith("mqtt")
    assert settings.agent.data_dir == tmp_path / "data"
    from registry.trust import trust_store

    # The signing keys the updater will trust, as the server handed them out.
    handed_out = [protocol.TrustStoreEntry.model_validate(key) for key in trust_store()]
    stored = json.loads(settings.trust_store_path.read_text())
    assert [protocol.TrustStoreEntry.model_validate(key) for key in stored] == handed_out
    # The secret is in the file and nowhere on the terminal.
    assert device.device_id in result.stdout
    assert settings.device.secret not in result.stdout + result.stderr

    shown = agent("status", "--config", str(path), "--json")
    assert shown.returncode == 0, shown.stderr
    summary = json.loads(shown.stdout)
    assert summary["device_id"] == device.device_id and summary["outbox_depth"] == 0
    assert settings.device.secret not in shown.stdout
    assert settings.device.secret not in agent("status", "--config", str(path)).stdout


def test_a_reused_token_is_refused_with_its_own_exit_code(live_server: Any, site: Site, tmp_path: Path) -> None:
    _, token = EnrollmentToken.issue(site)
    assert enroll(live_server.url, token, tmp_path / "one").returncode == 0
    result = enroll(live_server.url, token, tmp_path / "two", name="cam-2")
    assert result.returncode == Exit.TOKEN_USED
    assert result.stderr.strip() == "edgefleet-agent: enrollment refused: The enrollment token was already used."
    assert not (tmp_path / "two" / "agent.toml").exists()


def test_an_expired_token_is_refused(live_server: Any, site: Site, tmp_path: Path) -> None:
    row, token = EnrollmentToken.issue(site)
    EnrollmentToken.objects.filter(pk=row.pk).update(expires_at=row.created_at - timedelta(seconds=1))
    result = enroll(live_server.url, token, tmp_path)
    assert result.returncode == Exit.TOKEN_EXPIRED and "expired" in result.stderr
    assert not Device.objects.exists()


def test_a_token_for_another_site_is_refused(live_server: Any, site: Site, tmp_path: Path) -> None:
    _, token = EnrollmentToken.issue(site)
    result = enroll(live_server.url, token, tmp_path, "--site", "plant-b")
    assert result.returncode == Exit.WRONG_SITE and "another site" in result.stderr
    assert EnrollmentToken.objects.usable().count() == 1


def test_an_unknown_token_is_refused(live_server: Any, site: Site, tmp_path: Path) -> None:
    result = enroll(live_server.url, "efe_made-up", tmp_path)
    assert result.returncode == Exit.TOKEN_UNKNOWN and "not known" in result.stderr


def test_an_existing_config_is_kept_and_the_token_not_spent(live_server: Any, site: Site, tmp_path: Path) -> None:
    _, token = EnrollmentToken.issue(site)
    (tmp_path / "agent.toml").write_text("# enrolled before\n")
    result = enroll(live_server.url, token, tmp_path)
    assert result.returncode == Exit.CONFIG_EXISTS and "--force" in result.stderr
    assert (tmp_path / "agent.toml").read_text() == "# enrolled before\n"
    assert EnrollmentToken.objects.usable().count() == 1


def test_an_unreachable_server_is_reported_in_one_line(tmp_path: Path, db: None) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = enroll(f"http://127.0.0.1:{port}", "efe_x", tmp_path)
    assert result.returncode == Exit.UNREACHABLE
    assert result.stderr.startswith(f"edgefleet-agent: cannot reach http://127.0.0.1:{port}")
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_bad_server_url_is_a_usage_error(tmp_path: Path, db: None) -> None:
    result = enroll("ftp://fleet", "efe_x", tmp_path)
    assert result.returncode == Exit.USAGE and "--server" in result.stderr


def test_run_and_status_refuse_a_broken_config_naming_the_key(tmp_path: Path, db: None) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(
        '[server]\nurl = "http://x"\n[device]\nid = "d"\nsecret = "s"\n[mqtt]\nurl = "mqtt://b"\n'
        'keepalive = 1\n[agent]\ndata_dir = "/tmp/x"\n'
    )
    for command in ("run", "status"):
        result = agent(command, "--config", str(path))
        assert result.returncode == Exit.CONFIG_INVALID
        assert result.stderr.strip() == f"edgefleet-agent: {path}: mqtt.keepalive: must be >= 5"


def test_with_retry_for_it_retries_an_unreachable_server_then_gives_up(tmp_path: Path, db: None) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = enroll(f"http://127.0.0.1:{port}", "efe_x", tmp_path, "--retry-for", "1.5")
    assert result.returncode == Exit.UNREACHABLE
    assert "retrying in 1s" in result.stderr and not (tmp_path / "agent.toml").exists()


def test_a_name_the_server_refuses_is_reported_with_the_field(live_server: Any, site: Site, tmp_path: Path) -> None:
    _, token = EnrollmentToken.issue(site)
    result = enroll(live_server.url, token, tmp_path, name="cam 1!")
    assert result.returncode == Exit.REQUEST_REJECTED
    assert "the server rejected the request (HTTP 400): name:" in result.stderr
    assert EnrollmentToken.objects.usable().count() == 1

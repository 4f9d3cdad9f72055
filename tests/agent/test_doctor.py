"""``edgefleet-agent doctor``: a table of checks, and a non-zero exit when one fails."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from agent import config as agent_config
from agent.cli import app
from agent.doctor import check_broker, check_clock
from agent.lock import DataDirLock
from fleet.models import Site
from tests.agent.helpers import make_agent_config
from tests.brokers import embedded_broker


def write(tmp_path: Path, server: str, mqtt: str, device_id: str = "dev-x", secret: str = "s") -> Path:  # noqa: S107
    settings = make_agent_config(
        tmp_path / "data", server_url=server, mqtt_url=mqtt, device_id=device_id, secret=secret, server={"timeout_s": 2}
    )
    path = tmp_path / "agent.toml"
    agent_config.write(path, settings)
    return path


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_an_enrolled_device_passes_every_check(
    live_server: Any, mqtt_url: str, enroll_device: Any, tmp_path: Path
) -> None:
    enrollment = enroll_device(Site.objects.create(slug="plant-d", name="Plant D"), name="cam-d")
    path = write(tmp_path, live_server.url, mqtt_url, enrollment.device.device_id, enrollment.secret)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "trust.json").write_text(json.dumps(enrollment.trust_store))

    result = CliRunner().invoke(app, ["doctor", "--config", str(path)], terminal_width=200)

    assert result.exit_code == 0, result.output
    for name in ("config", "server", "clock", "broker", "model", "disk"):
        assert name in result.output
    assert "fallback model would serve" in result.output
    assert "fail" not in result.output


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_the_broker_check_uses_the_device_id_a_binding_broker_expects_and_spares_a_running_agent(
    enroll_device: Any, tmp_path: Path
) -> None:
    """Brokers bind credentials to the device's client id: a check under any other id is refused there."""
    enrollment = enroll_device(Site.objects.create(slug="plant-d", name="Plant D"), name="cam-d")
    with embedded_broker() as broker:
        path = write(tmp_path, "http://127.0.0.1:9", broker.url, enrollment.device.device_id, enrollment.secret)
        config = agent_config.load(path)

        assert check_broker(config).status == "ok"
        assert (
            check_broker(config.model_copy(update={"device": config.device.model_copy(update={"secret": "x"})})).status
            == "fail"
        )

        # An agent runs on this data directory: its session is not taken over, and the check says why.
        with DataDirLock(config.agent.data_dir):
            busy = check_broker(config)
        assert busy.status == "warn" and "holds the device's session" in busy.detail


def test_an_unreachable_server_and_broker_fail_with_a_non_zero_exit(tmp_path: Path) -> None:
    path = write(tmp_path, "http://127.0.0.1:9", "mqtt://127.0.0.1:9")

    result = CliRunner().invoke(app, ["doctor", "--config", str(path)], terminal_width=200)

    assert result.exit_code == 1
    assert result.output.count("fail") >= 2


def test_a_broken_config_is_one_failed_check(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text("[server]\nurl = 'ftp://x'\n")
    result = CliRunner().invoke(app, ["doctor", "--config", str(path)], terminal_width=200)
    assert result.exit_code == 1 and "config" in result.output


def test_a_clock_more_than_a_minute_off_fails() -> None:
    now = datetime(2026, 1, 1, 12, 0, tzinfo=timezone.utc)
    assert check_clock(format_datetime(now - timedelta(seconds=5), usegmt=True), now=now).status == "ok"
    assert check_clock(format_datetime(now - timedelta(minutes=5), usegmt=True), now=now).status == "fail"
    assert check_clock(None, now=now).status == "warn"
    assert check_clock("yesterday", now=now).status == "warn"

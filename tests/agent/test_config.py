"""The agent's config file: validated, overridable from the environment, written safely."""

from __future__ import annotations

import re
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from agent import config
from agent.config import ConfigError

GOOD = """
[server]
url = "https://fleet.example.com/"

[device]
id = "dev-0123456789abcdef"
secret = "efd_not-a-real-secret"
name = "cam-1"
site = "plant-a"

[mqtt]
url = "mqtts://broker.example.com"

[agent]
data_dir = "/var/lib/edgefleet-agent"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return path


def test_a_valid_file_loads_into_typed_settings_with_defaults(tmp_path: Path) -> None:
    settings = config.load(write(tmp_path, GOOD), environ={})
    assert settings.server.url == "https://fleet.example.com"
    assert settings.mqtt.keepalive == 30 and settings.mqtt.port == 8883 and settings.mqtt.tls
    assert settings.outbox_path == Path("/var/lib/edgefleet-agent/outbox.db")
    assert settings.trust_store_path.name == "trust.json" and settings.outbox.commit_interval_ms == 50


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("keepalive = 2", "mqtt.keepalive: must be >= 5"),
        ("keepalive = 'soon'", "mqtt.keepalive: must be an integer"),
        ("keepaliv = 30", "mqtt.keepaliv: unknown key"),
    ],
)
def test_errors_name_the_file_and_the_key(tmp_path: Path, extra: str, message: str) -> None:
    path = write(tmp_path, GOOD.replace('url = "mqtts://broker.example.com"', f'url = "mqtt://b"\n{extra}'))
    with pytest.raises(ConfigError) as caught:
        config.load(path, environ={})
    assert str(caught.value) == f"{path}: {message}"


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ('url = "mqtts://broker.example.com"', 'url = "http://broker"', "mqtt.url: must be an mqtt:// or mqtts:// URL"),
        ('id = "dev-0123456789abcdef"', 'id = "dev/../x"', "device.id: contains characters that are not allowed"),
        ('secret = "efd_not-a-real-secret"\n', "", "device.secret: is required"),
    ],
)
def test_bad_values_and_missing_keys_are_named(tmp_path: Path, old: str, new: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        config.load(write(tmp_path, GOOD.replace(old, new)), environ={})


def test_broken_toml_and_a_missing_file_get_a_clear_message(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="invalid TOML"):
        config.load(write(tmp_path, "[server\nurl="), environ={})
    with pytest.raises(ConfigError, match=r"no such file.*enroll"):
        config.load(tmp_path / "absent.toml", environ={})


def test_the_environment_overrides_a_key(tmp_path: Path) -> None:
    environ = {"EDGEFLEET_AGENT_MQTT_KEEPALIVE": "15", "EDGEFLEET_AGENT_LOGGING_FORMAT": "json"}
    settings = config.load(write(tmp_path, GOOD), environ=environ)
    assert settings.mqtt.keepalive == 15 and settings.logging.format == "json"


def test_logs_are_logfmt_at_info_unless_the_logging_section_says_otherwise(tmp_path: Path) -> None:
    assert config.load(write(tmp_path, GOOD), environ={}).logging == config.LoggingSettings(
        level="info", format="logfmt"
    )
    settings = config.load(write(tmp_path, GOOD + '[logging]\nlevel = "debug"\nformat = "json"\n'), environ={})
    assert (settings.logging.level, settings.logging.format) == ("debug", "json")
    with pytest.raises(
        ConfigError, match=re.escape("logging.format (from EDGEFLEET_AGENT_LOGGING_FORMAT): must be one")
    ):
        config.load(write(tmp_path, GOOD), environ={"EDGEFLEET_AGENT_LOGGING_FORMAT": "text"})


def test_the_log_keys_a_file_had_under_agent_still_load_into_the_logging_section(tmp_path: Path) -> None:
    older = GOOD + 'log_level = "warning"\nlog_format = "text"\n'
    settings = config.load(write(tmp_path, older), environ={"EDGEFLEET_AGENT_AGENT_LOG_FORMAT": "json"})
    assert (settings.logging.level, settings.logging.format) == ("warning", "json")
    assert config.load(write(tmp_path, older), environ={}).logging.format == "logfmt"


def test_a_bad_override_names_the_variable(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD)
    with pytest.raises(ConfigError, match=r"mqtt\.keepalive \(from EDGEFLEET_AGENT_MQTT_KEEPALIVE\): must be >= 5"):
        config.load(path, environ={"EDGEFLEET_AGENT_MQTT_KEEPALIVE": "1"})
    with pytest.raises(ConfigError, match="EDGEFLEET_AGENT_MQQT_KEEPALIVE: unknown section"):
        config.load(path, environ={"EDGEFLEET_AGENT_MQQT_KEEPALIVE": "10"})
    with pytest.raises(ConfigError, match=r"mqtt\.keep_alive .*unknown key"):
        config.load(path, environ={"EDGEFLEET_AGENT_MQTT_KEEP_ALIVE": "10"})


def test_the_process_environment_is_read_by_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEFLEET_AGENT_AGENT_HEARTBEAT_INTERVAL_S", "5")
    assert config.load(write(tmp_path, GOOD)).agent.heartbeat_interval_s == 5


def test_it_writes_the_file_atomically_with_0600_and_reads_it_back(tmp_path: Path) -> None:
    settings = config.load(write(tmp_path, GOOD), environ={})
    target = tmp_path / "etc" / "agent.toml"
    config.write(target, settings)
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert config.load(target, environ={}) == settings
    # Replacing it leaves no temporary file behind.
    config.write(target, settings)
    assert sorted(p.name for p in target.parent.iterdir()) == ["agent.toml"]


def test_a_failed_write_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "agent.toml"
    target.write_text("old")

    def broken_replace(*args: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(config.os, "replace", broken_replace)
    with pytest.raises(OSError, match="No space"):
        config.atomic_write(target, b"new")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["agent.toml"]


def test_only_keys_that_were_set_are_written_so_defaults_can_improve(tmp_path: Path) -> None:
    settings = config.load(write(tmp_path, GOOD), environ={"EDGEFLEET_AGENT_MQTT_KEEPALIVE": "15"})
    target = tmp_path / "out.toml"
    config.write(target, settings)
    text = target.read_text()
    assert "keepalive = 15" in text and "[outbox]" not in text and "commit_interval_ms" not in text


def test_reading_the_config_needs_only_the_base_install() -> None:
    # A fresh interpreter: this test process has long imported OpenCV and numpy.
    probe = "import agent.config, sys; assert not {'cv2','numpy','onnxruntime','paho'} & set(sys.modules)"
    completed = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert completed.returncode == 0, completed.stderr

"""Settings fail loudly, naming the variable, instead of starting with a wrong value."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.paths import ROOT


def load_settings(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "MQTT_", "SECRET_", "EDGEFLEET_"))}
    clean.update({"EDGEFLEET_DATA_DIR": str(tmp_path), **env})
    return subprocess.run(
        [sys.executable, "-c", "import config.settings as s; print(s.DATABASES['default']['ENGINE'])"],
        cwd=ROOT,
        env=clean,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"DEBUG": "maybe"}, "DEBUG"),
        ({"MQTT_KEEPALIVE": "soon"}, "MQTT_KEEPALIVE"),
        ({"MQTT_KEEPALIVE": "1"}, "MQTT_KEEPALIVE"),
        ({"DATABASE_URL": "mysql://x/y"}, "DATABASE_URL"),
        ({"MQTT_URL": "mqtt://host:notaport"}, "MQTT_URL"),
        ({"BROKER_PROVISIONER": "magic"}, "BROKER_PROVISIONER"),
        ({"EDGEFLEET_ENV": "production"}, "SECRET_KEY"),
        ({"EDGEFLEET_ENV": "production", "SECRET_KEY": "s" * 50, "DEBUG": "true"}, "DEBUG"),
        ({"SECRET_KEY_FILE": "/nonexistent/secret"}, "SECRET_KEY_FILE"),
        ({"LOG_FORMAT": "text"}, "LOG_FORMAT"),
    ],
)
def test_a_bad_value_fails_with_a_message_that_names_it(tmp_path: Path, env: dict[str, str], named: str) -> None:
    result = load_settings(tmp_path, **env)
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr and named in result.stderr


def test_the_default_database_is_a_sqlite_file(tmp_path: Path) -> None:
    result = load_settings(tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "django.db.backends.sqlite3"


def test_a_secret_can_come_from_a_file(tmp_path: Path) -> None:
    secret = tmp_path / "key"
    secret.write_text("s3cr3t-from-file\n")
    result = subprocess.run(
        [sys.executable, "-c", "import config.settings as s; print(s.SECRET_KEY)"],
        cwd=ROOT,
        env={
            **os.environ,
            "EDGEFLEET_ENV": "production",
            "SECRET_KEY_FILE": str(secret),
            "EDGEFLEET_DATA_DIR": str(tmp_path),
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "s3cr3t-from-file"


def test_postgres_comes_from_database_url(tmp_path: Path) -> None:
    result = load_settings(tmp_path, DATABASE_URL="postgres://u@db.example:5432/fleet")
    assert result.stdout.strip() == "django.db.backends.postgresql"


LOG_A_LINE = """
import logging, django
django.setup()
logging.getLogger("fleet.tasks").warning("silent devices marked offline", extra={"count": 3})
"""


@pytest.mark.parametrize(
    ("log_format", "line"),
    [
        ("logfmt", 'level=warning logger=fleet.tasks msg="silent devices marked offline" count=3'),
        ("json", '"level": "warning", "logger": "fleet.tasks", "msg": "silent devices marked offline", "count": 3}'),
    ],
)
def test_the_control_plane_logs_in_the_agents_format_chosen_by_log_format(
    tmp_path: Path, log_format: str, line: str
) -> None:
    result = subprocess.run(
        [sys.executable, "-c", LOG_A_LINE],
        cwd=ROOT,
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "EDGEFLEET_"))},
            "DJANGO_SETTINGS_MODULE": "config.settings",
            "EDGEFLEET_DATA_DIR": str(tmp_path),
            "LOG_FORMAT": log_format,
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.startswith(("ts=", '{"ts": ')) and result.stderr.rstrip().endswith(line), result.stderr

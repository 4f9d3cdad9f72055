"""Test settings: the real services when they are here, the embedded defaults when not.

PostgreSQL on 127.0.0.1:5432 is used when it answers (as on CI); otherwise
SQLite, so a newcomer's laptop still runs every test. The same probe decides
the MQTT broker (see tests/brokers.py).
"""

from __future__ import annotations

import os
import socket
import tempfile


def _answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


if "DATABASE_URL" not in os.environ and _answers("127.0.0.1", 5432):
    os.environ["DATABASE_URL"] = "postgres://postgres@127.0.0.1:5432/edgefleet"
os.environ.setdefault("EDGEFLEET_DATA_DIR", tempfile.mkdtemp(prefix="edgefleet-test-"))
os.environ.setdefault("BROKER_PROVISIONER", "none")
os.environ.setdefault("CELERY_TASK_ALWAYS_EAGER", "true")

from config.settings import *  # noqa: E402,F403

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # fast users in tests

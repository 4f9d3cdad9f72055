"""MQTT over TLS as deploy/ sets it up: Mosquitto's TLS listener with init-secrets.sh's certificate.

A device trusts the private CA through its ``mqtt.ca_file``; the bridge through
OpenSSL's ``SSL_CERT_FILE`` (docs/operations.md, "TLS"), and refuses the
broker without it.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.brokers import MOSQUITTO, free_port, wait_for_connack
from tests.paths import ROOT

CONNECT = """
import sys, django
django.setup()
from bridge.process import Bridge, BridgeConfig
bridge = Bridge(BridgeConfig(url=sys.argv[1], shared_group=None))
bridge.start()
connected = bridge.wait_connected(float(sys.argv[2]))
bridge.stop()
print("connected" if connected else "refused")
"""


@pytest.fixture
def tls_broker(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    if not (shutil.which("openssl") and Path(MOSQUITTO).exists()):
        pytest.skip("openssl or mosquitto is not installed")
    compose = tmp_path / "compose"
    shutil.copytree(ROOT / "deploy" / "compose", compose)
    made = subprocess.run(
        ["sh", str(compose / "init-secrets.sh"), "fleet.test", "localhost"], capture_output=True, timeout=60
    )
    assert made.returncode == 0, made.stderr
    secrets = compose / "secrets"
    plain, tls = free_port(), free_port()
    # The compose listener and certificate lines, with this test's ports and paths; anonymous, since
    # the ACLs have their own tests (tests/fleet/broker) and this one is about the TLS handshake.
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(
        "\n".join(
            [
                f"user {pwd.getpwuid(os.geteuid()).pw_name}",
                "per_listener_settings false",
                "allow_anonymous true",
                f"listener {tls} 127.0.0.1",
                f"certfile {secrets / 'mqtt.crt'}",
                f"keyfile {secrets / 'mqtt.key'}",
                "tls_version tlsv1.2",
                f"listener {plain} 127.0.0.1",
                "persistence false",
                "",
            ]
        )
    )
    process = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_connack("127.0.0.1", plain, alive=process)
        yield f"mqtts://localhost:{tls}", secrets / "ca.crt"
    finally:
        process.terminate()
        process.wait(10)


def bridge_connects(url: str, tmp_path: Path, wait_s: float, **env: str) -> str:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("SSL_CERT", "DATABASE_", "MQTT_"))}
    result = subprocess.run(
        [sys.executable, "-c", CONNECT, url, str(wait_s)],
        cwd=ROOT,
        env={**clean, "DJANGO_SETTINGS_MODULE": "config.settings", "EDGEFLEET_DATA_DIR": str(tmp_path), **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()[-1]


@pytest.mark.integration
def test_the_bridge_trusts_a_private_ca_through_ssl_cert_file_and_refuses_the_broker_without_it(
    tls_broker: tuple[str, Path], tmp_path: Path
) -> None:
    url, ca = tls_broker
    assert bridge_connects(url, tmp_path, 20, SSL_CERT_FILE=str(ca)) == "connected"
    # A refused handshake is immediate on loopback; paho would only retry it.
    assert bridge_connects(url, tmp_path, 3) == "refused"

"""The embedded broker's command and the topic rule it shares with the dynamic-security provisioner."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from fleet.broker import acl
from tests.brokers import free_port, wait_for_connack
from tests.fleet.broker.clients import Probe
from tests.paths import ROOT


@pytest.mark.parametrize(
    ("topic_filter", "topic", "expected"),
    [
        ("edgefleet/v1/#", "edgefleet/v1/dev-a/telemetry", True),
        ("edgefleet/v1/+/telemetry", "edgefleet/v1/dev-a/telemetry", True),
        ("edgefleet/v1/+/telemetry", "edgefleet/v1/dev-a/desired", False),
        ("$share/+/edgefleet/v1/#", "$share/g1/edgefleet/v1/+/telemetry", True),
        ("edgefleet/v1/dev-a/desired", "edgefleet/v1/+/desired", False),
        ("edgefleet/v1/+/desired", "edgefleet/v1/#", False),
        ("edgefleet/v1/#", "other/topic", False),
    ],
)
def test_filters_match_as_mqtt_does(topic_filter: str, topic: str, expected: bool) -> None:
    assert acl.matches(topic_filter, topic) is expected


def test_a_device_may_only_name_its_own_topics_exactly() -> None:
    assert acl.device_may_publish("dev-a", "edgefleet/v1/dev-a/telemetry")
    assert not acl.device_may_publish("dev-a", "edgefleet/v1/dev-a/desired")
    assert not acl.device_may_publish("dev-a", "edgefleet/v1/dev-b/telemetry")
    assert acl.device_may_subscribe("dev-a", "edgefleet/v1/dev-a/desired")
    assert not acl.device_may_subscribe("dev-a", "edgefleet/v1/dev-a/+")
    assert not acl.device_may_subscribe("dev-a", "edgefleet/v1/dev-a/telemetry")


def test_the_bridge_touches_device_topics_only() -> None:
    assert acl.bridge_may("edgefleet/v1/dev-a/desired")
    assert acl.bridge_may("$share/edgefleet-bridge/edgefleet/v1/+/telemetry")
    assert not acl.bridge_may("$SYS/broker/clients")
    assert not acl.bridge_may("#")


@pytest.mark.integration
def test_the_command_serves_until_sigterm_and_then_exits_cleanly(tmp_path: Path) -> None:
    port = free_port()
    secret_file = tmp_path / "bridge-password"
    secret_file.write_text("bridge-pw\n")
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "EDGEFLEET_DATA_DIR": str(tmp_path),
        "MQTT_USERNAME": "edgefleet-bridge",
        "MQTT_PASSWORD_FILE": str(secret_file),
    }
    env.pop("MQTT_PASSWORD", None)
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "manage.py"), "embedded_broker", "--bind", f"127.0.0.1:{port}"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for_connack("127.0.0.1", port, alive=process)
        bridge = Probe(f"mqtt://127.0.0.1:{port}", "edgefleet-bridge", "bridge-pw", client_id="bridge")
        assert not bridge.connect().is_failure, "the bridge account from MQTT_PASSWORD_FILE was refused"
        assert Probe(f"mqtt://127.0.0.1:{port}", "edgefleet-bridge", "wrong").connect().is_failure
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=30)
        assert bridge.wait_disconnected()
        bridge.close()
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, err
    assert "embedded MQTT broker stopped" in out
    assert "Traceback" not in err, err


def test_the_command_rejects_a_bad_bind_address() -> None:
    from django.core.management import call_command
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match="HOST:PORT"):
        call_command("embedded_broker", "--bind", "localhost")

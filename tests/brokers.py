"""Private MQTT brokers for tests that need their own credentials and ACLs.

``mosquitto_with_dynsec()`` starts the machine's ``mosquitto`` binary on a
free port with the dynamic-security plugin and an admin account, and
``embedded_broker()`` runs the control plane's embedded broker in a thread.
Both wait for a real CONNACK before handing the broker over, and stop it on
exit. A test that needs one skips, with the reason, when it cannot start.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

MOSQUITTO = os.environ.get("MOSQUITTO_BIN") or shutil.which("mosquitto") or "/usr/sbin/mosquitto"
DYNSEC_PLUGIN = os.environ.get("MOSQUITTO_DYNSEC_PLUGIN", "/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so")


@dataclass(frozen=True)
class RunningBroker:
    host: str
    port: int
    admin_username: str = ""
    admin_password: str = ""

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"


def address(url: str) -> tuple[str, int]:
    """Host and port of an ``mqtt://`` URL, for plain paho clients in tests."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or 1883


def clear_retained(url: str, device_id: str, suffixes: tuple[str, ...] = ("status", "desired")) -> None:
    """Leave a shared broker as found: no retained messages of this device."""
    import paho.mqtt.client as mqtt

    from agent.kernel import protocol

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"cleanup-{device_id}")
    client.connect(*address(url))
    client.loop_start()
    try:
        for suffix in suffixes:
            client.publish(protocol.topic(device_id, suffix), b"", qos=1, retain=True).wait_for_publish(5)
    finally:
        client.disconnect()
        client.loop_stop()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_connack(
    host: str, port: int, timeout: float = 20, *, alive: subprocess.Popen[bytes] | None = None
) -> None:
    """Return once the broker answers an MQTT CONNECT (refused or not); fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    answered = threading.Event()
    while time.monotonic() < deadline:
        if alive is not None and alive.poll() is not None:
            raise RuntimeError(f"the broker exited with status {alive.returncode} before accepting connections")
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"probe-{secrets.token_hex(4)}")
        client.on_connect = lambda *_args: answered.set()
        try:
            client.connect(host, port, keepalive=5)
        except OSError:
            # Not listening yet: the only wait here is for the port to open.
            time.sleep(0.05)
            continue
        client.loop_start()
        got = answered.wait(max(0.1, deadline - time.monotonic()))
        client.disconnect()
        client.loop_stop()
        if got:
            return
    raise RuntimeError(f"no MQTT broker answered on {host}:{port} within {timeout:g} s")


def dynsec_password(password: str) -> dict[str, object]:
    """The hash fields Mosquitto 2.0's dynamic-security file stores (PBKDF2-SHA512, as mosquitto_ctrl writes)."""
    salt = secrets.token_bytes(12)
    iterations = 101
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations, 64)
    return {
        "password": base64.b64encode(digest).decode(),
        "salt": base64.b64encode(salt).decode(),
        "iterations": iterations,
    }


def dynsec_state(admin_username: str, admin_password: str) -> dict[str, object]:
    """The state ``mosquitto_ctrl dynsec init`` writes: one admin that may only manage the plugin."""
    admin_acls = [
        {"acltype": t, "topic": "$CONTROL/dynamic-security/#", "allow": True}
        for t in ("publishClientSend", "publishClientReceive", "subscribePattern")
    ]
    return {
        "clients": [{"username": admin_username, "roles": [{"rolename": "admin"}], **dynsec_password(admin_password)}],
        "roles": [{"rolename": "admin", "acls": admin_acls}],
        "defaultACLAccess": {
            "publishClientSend": False,
            "publishClientReceive": True,
            "subscribe": False,
            "unsubscribe": True,
        },
    }


def mosquitto_skip_reason() -> str | None:
    if not (Path(MOSQUITTO).is_file() and os.access(MOSQUITTO, os.X_OK)):
        return f"mosquitto binary not found ({MOSQUITTO}); install mosquitto or set MOSQUITTO_BIN"
    if not Path(DYNSEC_PLUGIN).is_file():
        return f"Mosquitto dynamic-security plugin not found ({DYNSEC_PLUGIN}); set MOSQUITTO_DYNSEC_PLUGIN"
    return None


def _mosquitto_config(port: int, state: Path | None, workdir: Path, base_config: Path | None) -> str:
    # Run as root, Mosquitto drops to user "mosquitto", which cannot read this private tmp dir.
    lines = [f"user {pwd.getpwuid(os.geteuid()).pw_name}"]
    if base_config is None:
        lines += [
            "per_listener_settings false",
            "allow_anonymous false",
            f"plugin {DYNSEC_PLUGIN}",
            "persistence false",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
        ]
    else:
        moved = ("listener", "plugin", "plugin_opt_config_file", "persistence_location", "certfile", "keyfile", "user")
        moved += () if state else ("allow_anonymous", "tls_version")
        lines += [line for line in base_config.read_text().splitlines() if line.split(" ", 1)[0] not in moved]
        lines += [f"plugin {DYNSEC_PLUGIN}"] if state else ["allow_anonymous true"]
        lines += [f"persistence_location {workdir}/"]
    lines += [f"listener {port} 127.0.0.1"]
    lines += [f"plugin_opt_config_file {state}", ""] if state else [""]
    return "\n".join(lines)


class Mosquitto:
    """A private Mosquitto process that can be killed and started again on the same port.

    Its persistence file and dynamic-security state stay in its working directory, so a
    restarted broker has the accounts and retained messages the killed one had saved.
    """

    def __init__(self, broker: RunningBroker, config: Path, log: Path) -> None:
        self.broker = broker
        self.config = config
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen([MOSQUITTO, "-c", str(self.config)], stdout=log, stderr=subprocess.STDOUT)
        wait_for_connack(self.broker.host, self.broker.port, alive=self.process)

    def kill(self) -> None:
        """SIGKILL: no goodbye to its clients, nothing saved since its last autosave."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@contextlib.contextmanager
def mosquitto_server(workdir: Path, base_config: Path | None = None) -> Iterator[Mosquitto]:
    """``mosquitto_with_dynsec``, with the process in hand (kill, start again); skips without Mosquitto."""
    reason = mosquitto_skip_reason()
    if reason:
        pytest.skip(reason)
    port = free_port()
    admin = RunningBroker("127.0.0.1", port, "edgefleet-admin", secrets.token_urlsafe(16))
    state = workdir / "dynamic-security.json"
    state.write_text(json.dumps(dynsec_state(admin.admin_username, admin.admin_password)))
    config = workdir / "mosquitto.conf"
    config.write_text(_mosquitto_config(port, state, workdir, base_config))
    server = Mosquitto(admin, config, workdir / "mosquitto.log")
    try:
        server.start()
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def mosquitto_with_dynsec(workdir: Path, base_config: Path | None = None) -> Iterator[RunningBroker]:
    """A private Mosquitto with dynamic security; skips the test when Mosquitto is not installed.

    ``base_config`` runs a shipped configuration file instead of the minimal
    one, with its listener, plugin and file locations moved to this test's.
    """
    with mosquitto_server(workdir, base_config) as server:
        yield server.broker


@contextlib.contextmanager
def mosquitto_open(workdir: Path, base_config: Path) -> Iterator[Mosquitto]:
    """A private Mosquitto running ``base_config`` with its authentication left out: anyone may connect.

    For measurements that must leave out what dynamic security costs (every change to it rewrites its
    whole state file); never what a test of access control runs.
    """
    if not (Path(MOSQUITTO).is_file() and os.access(MOSQUITTO, os.X_OK)):
        pytest.skip(f"mosquitto binary not found ({MOSQUITTO}); install mosquitto or set MOSQUITTO_BIN")
    port = free_port()
    config = workdir / "mosquitto.conf"
    config.write_text(_mosquitto_config(port, None, workdir, base_config))
    server = Mosquitto(RunningBroker("127.0.0.1", port), config, workdir / "mosquitto.log")
    try:
        server.start()
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def embedded_broker(
    *, bridge_username: str = "", bridge_password: str = "", recheck_s: float = 0.2, allow_anonymous: bool = False
) -> Iterator[RunningBroker]:
    """The embedded (amqtt) broker in a thread of this process, so it reads the test database."""
    from fleet.broker.embedded import EmbeddedBroker, EmbeddedBrokerConfig

    port = free_port()
    broker = EmbeddedBroker(
        EmbeddedBrokerConfig(
            bind=f"127.0.0.1:{port}",
            bridge_username=bridge_username,
            bridge_password=bridge_password,
            recheck_s=recheck_s,
            allow_anonymous=allow_anonymous,
        )
    )
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    failure: list[BaseException] = []

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(broker.serve(stop))
        except BaseException as exc:  # reported to the test below
            failure.append(exc)
        finally:
            loop.close()

    thread = threading.Thread(target=run, name="embedded-broker", daemon=True)
    thread.start()
    try:
        wait_for_connack("127.0.0.1", port)
    except RuntimeError:
        raise RuntimeError(f"embedded broker did not start: {failure!r}") from None
    try:
        yield RunningBroker("127.0.0.1", port)
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(15)
    if failure:
        raise failure[0]

"""``edgefleet-agent doctor``: what an installer checks before walking away from a device.

Each check answers ok, warn or fail with one line of detail. The clock
matters because bundle expiry and key retirement are judged by it; the disk
because an update needs room for the archive and the unpacked copy beside
the model in service.
"""

from __future__ import annotations

import shutil
import socket
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, Literal

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from rich.console import Console
from rich.table import Table

from agent import config as agent_config
from agent.fallback import METADATA as FALLBACK_METADATA
from agent.inference import ModelLoadError, ModelSession
from agent.kernel.verify import VerificationError
from agent.lock import DataDirBusy, DataDirLock
from agent.trust import authorization, load_keyring
from agent.updater import CURRENT, ModelStore, check_installed

MAX_SKEW_S = 60.0
MIN_FREE_BYTES = 64 * 1024 * 1024

Status = Literal["ok", "warn", "fail"]


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    detail: str


def run_checks(path: Path) -> list[Check]:
    try:
        config = agent_config.load(path)
    except agent_config.ConfigError as exc:
        return [Check("config", "fail", str(exc))]
    checks = [Check("config", "ok", f"{path} (device {config.device.id})")]
    checks += check_server(config)
    checks.append(check_broker(config))
    checks.append(check_model(config))
    checks.append(check_disk(config))
    return checks


def check_server(config: agent_config.AgentConfig, *, now: datetime | None = None) -> list[Check]:
    """Reach the control plane with the device's credentials; compare clocks by its ``Date`` header."""
    url = config.server.url + "/api/v1/keyring"
    request = urllib.request.Request(url, headers={"Authorization": authorization(config)})  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=config.server.timeout_s) as response:  # noqa: S310
            status, date = response.status, response.headers.get("Date")
    except urllib.error.HTTPError as exc:
        status, date = exc.code, exc.headers.get("Date")
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        return [Check("server", "fail", f"{config.server.url}: {reason}"), Check("clock", "warn", "not checked")]
    if status in (401, 403):
        server = Check("server", "fail", f"{config.server.url}: the device credentials are refused (HTTP {status})")
    elif status >= 400:
        server = Check("server", "fail", f"{config.server.url}: HTTP {status}")
    else:
        server = Check("server", "ok", f"{config.server.url} answers with the device credentials")
    return [server, check_clock(date, now=now)]


def check_clock(date: str | None, *, now: datetime | None = None) -> Check:
    if not date:
        return Check("clock", "warn", "the server sent no Date header")
    try:
        server_time = parsedate_to_datetime(date)
    except (TypeError, ValueError):
        return Check("clock", "warn", f"unreadable Date header {date!r}")
    skew = ((now or datetime.now(timezone.utc)) - server_time).total_seconds()
    # The Date header has one-second resolution: a second of skew is noise.
    detail = f"{skew:+.0f} s against the server"
    return Check("clock", "fail" if abs(skew) > MAX_SKEW_S else "ok", detail)


def check_broker(config: agent_config.AgentConfig, timeout: float = 5.0) -> Check:
    """Connect with the device's credentials under its own client id, as the agent does.

    Brokers bind a device's credentials to its client id, so no other id would
    be let in; and a second CONNECT under that id would end a running agent's
    session (its last will announcing it offline). So the credentials are
    checked only while no agent holds the data directory (``agent.lock``), and
    the lock is held for the check; otherwise the broker's reachability is.
    """
    settings = config.mqtt
    try:
        socket.create_connection((settings.host, settings.port), timeout=timeout).close()
    except OSError as exc:
        return Check("broker", "fail", f"{settings.url}: {exc.strerror or exc}")
    lock = DataDirLock(config.agent.data_dir)
    try:
        lock.acquire()
    except DataDirBusy as exc:
        holder = f"PID {exc.pid}" if exc.pid is not None else "another process"
        return Check(
            "broker",
            "warn",
            f"{settings.url} is reachable; the credentials are not re-checked while an agent ({holder}) "
            "holds the device's session",
        )
    except OSError as exc:
        return Check("broker", "warn", f"{settings.url} is reachable; cannot lock {config.agent.data_dir}: {exc}")
    try:
        return _connect(config, timeout)
    finally:
        lock.release()


def _connect(config: agent_config.AgentConfig, timeout: float) -> Check:
    settings = config.mqtt
    answered = threading.Event()
    outcome: dict[str, Any] = {}

    def on_connect(client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        outcome["reason"] = reason
        answered.set()

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=config.device.id, clean_session=True)
    client.username_pw_set(config.device.id, config.device.secret)
    if settings.tls:
        client.tls_set(ca_certs=str(settings.ca_file) if settings.ca_file else None)
    client.on_connect = on_connect
    try:
        client.connect(settings.host, settings.port, keepalive=10)
        client.loop_start()
        if not answered.wait(timeout):
            return Check("broker", "fail", f"{settings.url}: no CONNACK within {timeout:.0f} s")
    except OSError as exc:
        return Check("broker", "fail", f"{settings.url}: {exc}")
    finally:
        client.disconnect()
        client.loop_stop()
    reason = outcome["reason"]
    if getattr(reason, "is_failure", False):
        return Check("broker", "fail", f"{settings.url}: connection refused: {reason}")
    return Check("broker", "ok", f"{settings.url} accepts the device credentials")


def check_model(config: agent_config.AgentConfig) -> Check:
    store = ModelStore(config.models_dir)
    directory = store.pointer(CURRENT)
    if directory is None:
        try:
            ModelSession.from_metadata(FALLBACK_METADATA, settings=config.inference)
        except ModelLoadError as exc:
            return Check("model", "fail", f"no model installed and the fallback does not load: {exc}")
        return Check("model", "warn", "no model installed yet: the fallback model would serve")
    try:
        bundle = check_installed(directory, load_keyring(config))
        ModelSession.from_bundle(directory, settings=config.inference)
    except (VerificationError, ModelLoadError, OSError) as exc:
        return Check("model", "fail", f"{directory.name}: {exc}"[:300])
    return Check("model", "ok", f"{bundle.manifest.model} {bundle.manifest.version} verifies and loads")


def check_disk(config: agent_config.AgentConfig) -> Check:
    config.data_dir.mkdir(parents=True, exist_ok=True)
    usage = shutil.disk_usage(config.data_dir)
    # An update holds the archive and its unpacked copy beside the model in service.
    wanted = min(2 * config.updater.max_bundle_bytes, 1024 * 1024 * 1024)
    detail = f"{usage.free / 1e9:.2f} GB free in {config.data_dir}"
    if usage.free < MIN_FREE_BYTES:
        return Check("disk", "fail", detail)
    return Check("disk", "ok" if usage.free >= wanted else "warn", detail)


def print_checks(checks: list[Check]) -> None:
    table = Table(title="edgefleet-agent doctor")
    table.add_column("check")
    table.add_column("status")
    table.add_column("detail", overflow="fold")
    colours = {"ok": "green", "warn": "yellow", "fail": "red"}
    for check in checks:
        table.add_row(check.name, f"[{colours[check.status]}]{check.status}[/]", check.detail)
    Console().print(table)

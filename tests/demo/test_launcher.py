"""The demo launcher's pieces: stop order, a clean start, and a second run right after the first."""

from __future__ import annotations

import json
import socket
import sys
import time
import urllib.request
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from demo.launcher import Demo, clear_state, free_port

SIMULATED = 20

# A child that notes when it is asked to stop and when it has stopped, a moment later.
CHILD = """
import pathlib, signal, sys, time
name, folder = sys.argv[1], pathlib.Path(sys.argv[2])
def note(event):
    with (folder / "events").open("a") as f:
        f.write(f"{name} {event}\\n")
def stop(*_):
    note("asked")
    time.sleep(0.3)
    note("stopped")
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
(folder / f"{name}.ready").touch()
while True:
    time.sleep(1)
"""


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:.0f} s")
        time.sleep(0.2)


def test_the_demo_stops_its_children_newest_first_waiting_for_each_stage(tmp_path: Path) -> None:
    demo = Demo(data_dir=tmp_path / "data", web_port=0, mqtt_port=0)
    folder = tmp_path / "events"
    folder.mkdir()
    for name in ("broker", "web", "bridge"):
        demo.spawn(name, sys.executable, "-c", CHILD, name, str(folder))
    for index, name in enumerate(("agent-1", "agent-2", "agent-3")):
        demo.spawn(name, sys.executable, "-c", CHILD, name, str(folder), with_previous=index > 0)
    names = [name for name, _ in demo.children]
    wait_until(lambda: all((folder / f"{n}.ready").exists() for n in names), 30, "children ready")

    demo.stop()

    events = (folder / "events").read_text().split("\n")[:-1]
    # The agents are one stage: all asked, then all stopped, before anyone else is asked.
    assert sorted(events[:3]) == ["agent-1 asked", "agent-2 asked", "agent-3 asked"], events
    assert sorted(events[3:6]) == ["agent-1 stopped", "agent-2 stopped", "agent-3 stopped"], events
    assert events[6:] == [
        "bridge asked",
        "bridge stopped",
        "web asked",
        "web stopped",
        "broker asked",
        "broker stopped",
    ]
    assert all(proc.returncode == 0 for _, proc in demo.children)


def test_a_clean_start_removes_the_previous_runs_state_and_keeps_the_caches(tmp_path: Path) -> None:
    (tmp_path / "edgefleet.sqlite3").write_text("old database")
    (tmp_path / "devices" / "plant-north").mkdir(parents=True)
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "broker.log").write_text("old log")
    (tmp_path / "cameras" / "normal").mkdir(parents=True)
    (tmp_path / "publish").mkdir()
    (tmp_path / "mine.txt").write_text("not the demo's")

    assert clear_state(tmp_path) == ["edgefleet.sqlite3", "devices", "logs"]

    assert sorted(p.name for p in tmp_path.iterdir()) == ["cameras", "mine.txt", "publish"]
    assert clear_state(tmp_path) == []


def get_json(url: str, token: str) -> Any:
    request = urllib.request.Request(url)  # noqa: S310 - the demo's own http:// address
    request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310 - localhost
        return json.load(response)


def devices_online_since(demo: Demo, token: str, count: int, since: datetime, timeout: float) -> list[Any]:
    """Wait until ``count`` devices are online with a heartbeat after ``since``."""
    devices: list[Any] = []

    def fresh() -> bool:
        nonlocal devices
        devices = get_json(f"{demo.server}/api/v1/devices/", token)["results"]
        return len(devices) == count and all(
            d["online"] and d["last_seen"] and datetime.fromisoformat(d["last_seen"]) > since for d in devices
        )

    try:
        wait_until(fresh, timeout, f"{count} devices online on {demo.mqtt_url}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; the API lists {devices}") from None
    return devices


def exited(demo: Demo) -> list[tuple[str, int | None]]:
    return [(name, proc.returncode) for name, proc in demo.children if proc.poll() is not None]


def leave_time_wait(port: int) -> None:
    """Leave a connection in TIME-WAIT on local port ``port``: its server end closes first, as a web server does."""
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", port))
        listener.listen(1)
        with socket.create_connection(("127.0.0.1", port)) as client:
            served, _ = listener.accept()
            served.close()  # the active close: this end (local port ``port``) goes to TIME-WAIT
            client.recv(1)  # the peer's FIN, then the client closes in turn


def in_time_wait(port: int) -> bool:
    """Whether a TCP connection with local port ``port`` is in TIME-WAIT (Linux, IPv4)."""
    rows = Path("/proc/net/tcp").read_text().splitlines()[1:]
    # Columns: sl, local address (hex ip:port), remote address, state (06 is TIME_WAIT), ...
    return any(row.split()[1].endswith(f":{port:04X}") and row.split()[3] == "06" for row in rows)


# Each run starts the broker, the web server, the bridge, the worker, two agents (no model,
# no camera) and the simulator with 20 devices: about half a minute on two busy cores.
# Two whole demo runs (about 70 s): in make chaos; make test keeps tests/demo/test_demo.py's one run.
@pytest.mark.integration
@pytest.mark.chaos
@pytest.mark.timeout(300)
def test_a_second_run_right_after_the_first_finds_its_ports_and_brings_its_devices_online(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sites = {"plant-north": ("North Plant", "line-1-cam", 2)}
    first = Demo(tmp_path, free_port(0), free_port(0), sites=sites, with_model=False, sim_devices=SIMULATED)
    started = datetime.now().astimezone()
    try:
        seed = first.start()
        devices = devices_online_since(first, seed["api_token"], 2 + SIMULATED, started, 90)
        ids = {d["device_id"] for d in devices}
        assert exited(first) == [], "every child keeps running"
    finally:
        first.stop()
    simulated = [d for d in devices if d["labels"].get("simulated") == "true"]
    assert len(simulated) == SIMULATED
    assert {d["site"] for d in simulated} == {
        "sim-plant-west",
        "sim-depot-north",
        "sim-depot-south",
        "sim-store-central",
    }
    assert f"simulated : {SIMULATED} of {SIMULATED} online" in capsys.readouterr().out
    # Stopped with SIGTERM, the simulator said goodbye and printed its report instead of vanishing.
    assert f"{SIMULATED} devices, peak {SIMULATED} connected" in (tmp_path / "logs" / "sim.log").read_text()

    # A server that closes its connections first leaves them in TIME-WAIT on its
    # port, which made the old probe move the next run to another port. Whether
    # the web server's last ones did depends on timing, so one is made for sure.
    leave_time_wait(first.web_port)
    if Path("/proc/net/tcp").exists():
        assert in_time_wait(first.web_port), "the test no longer exercises TIME-WAIT"
    assert free_port(first.web_port) == first.web_port
    assert free_port(first.mqtt_port) == first.mqtt_port
    # Had the broker's port been taken, the agents, enrolled with the first
    # address, must find it anyway: the launcher gives them this run's.
    moved = free_port(0)
    second = Demo(tmp_path, free_port(first.web_port), moved, sites=sites, with_model=False, sim_devices=SIMULATED)
    assert second.web_port == first.web_port
    restarted = datetime.now().astimezone()
    try:
        seed = second.start()
        devices = devices_online_since(second, seed["api_token"], 2 + SIMULATED, restarted, 90)
        assert exited(second) == [], "every child keeps running"
    finally:
        second.stop()
    # The simulated ones too: the simulator's state file keeps their identities, nothing enrolls again.
    assert {d["device_id"] for d in devices} == ids, "the same enrolled devices, continued"

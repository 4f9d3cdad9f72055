"""One agent per data directory: the lock itself, then real ``edgefleet-agent`` processes on one data dir."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent import config as agent_config
from agent import outbox
from agent.cli import Exit
from agent.lock import LOCK_NAME, DataDirBusy, DataDirLock
from tests.agent.conftest import AGENT, AgentProcess

# A process that takes the lock, says so, and holds it until it is killed.
HOLDER = """
import sys, time
from pathlib import Path
from agent.lock import DataDirLock
DataDirLock(Path(sys.argv[1])).acquire()
print("locked", flush=True)
time.sleep(600)
"""


def agent_env() -> dict[str, str]:
    # The developer's own overrides must not leak into the process under test.
    return {k: v for k, v in os.environ.items() if not k.startswith("EDGEFLEET_AGENT_")}


def agent(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(AGENT), *args], capture_output=True, text=True, env=agent_env(), timeout=120)


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    """Another process holding the lock of ``tmp_path / "data"``."""
    process = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path / "data")], stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None and process.stdout.readline() == "locked\n"
    yield process
    if process.poll() is None:
        process.kill()
    process.wait(timeout=30)
    process.stdout.close()


# --- the lock ---------------------------------------------------------------------


@pytest.mark.unit
def test_a_second_lock_is_refused_while_the_first_is_held(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with DataDirLock(data):
        with pytest.raises(DataDirBusy) as refused:
            DataDirLock(data).acquire()
    assert refused.value.pid == os.getpid()
    assert str(refused.value) == f"{data} is in use by another agent (PID {os.getpid()}); stop it first"


@pytest.mark.unit
def test_the_lock_is_free_again_after_release(tmp_path: Path) -> None:
    first = DataDirLock(tmp_path / "data")
    first.acquire()
    first.release()
    second = DataDirLock(tmp_path / "data")
    second.acquire()
    assert second.held and not first.held
    assert (tmp_path / "data" / LOCK_NAME).read_text() == f"{os.getpid()}\n"
    second.release()
    # Released, the file stays (see DataDirLock.release) but names no holder.
    assert (tmp_path / "data" / LOCK_NAME).read_text() == ""


@pytest.mark.unit
def test_a_lock_held_by_another_process_names_that_process(tmp_path: Path, holder: subprocess.Popen[str]) -> None:
    with pytest.raises(DataDirBusy) as refused:
        DataDirLock(tmp_path / "data").acquire()
    assert refused.value.pid == holder.pid


@pytest.mark.unit
def test_the_lock_file_of_a_process_killed_with_sigkill_does_not_block_the_next_lock(
    tmp_path: Path, holder: subprocess.Popen[str]
) -> None:
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=30)
    path = tmp_path / "data" / LOCK_NAME
    assert path.read_text() == f"{holder.pid}\n", "the dead holder's file is still there"
    with DataDirLock(tmp_path / "data") as lock:
        assert lock.held
        assert path.read_text() == f"{os.getpid()}\n"


# --- edgefleet-agent processes ---------------------------------------------------


@pytest.fixture
def config(tmp_path: Path, agent_config_factory: Callable[..., agent_config.AgentConfig]) -> Path:
    """An agent config whose broker is away: the agent keeps running and writing heartbeats."""
    path = tmp_path / "agent.toml"
    agent_config.write(path, agent_config_factory(agent={"heartbeat_interval_s": 1}))
    return path


@pytest.fixture
def start(config: Path, tmp_path: Path, notify_socket: socket.socket) -> Iterator[Callable[[], AgentProcess]]:
    """Start ``edgefleet-agent run`` on ``config`` and wait until it is ready (READY=1)."""
    started: list[AgentProcess] = []

    def start() -> AgentProcess:
        process = AgentProcess(
            config, tmp_path / f"agent-{len(started)}.log", NOTIFY_SOCKET=notify_socket.getsockname()
        )
        started.append(process)
        try:
            while "READY=1" not in notify_socket.recv(4096).decode():
                pass
        except TimeoutError:
            pytest.fail(f"the agent did not get ready:\n{process.log()}")
        return process

    yield start
    for process in started:
        process.close()


def last_seq(data: Path) -> int:
    stats = outbox.inspect(data / "outbox.db")
    return stats.last_seq if stats else 0


def wait_for_heartbeat_after(data: Path, seq: int, timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if last_seq(data) > seq:
            return True
        time.sleep(0.1)
    return False


@pytest.mark.integration
def test_a_second_agent_on_the_same_data_dir_is_refused_while_the_first_keeps_running(
    start: Callable[[], AgentProcess], config: Path, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    first = start()
    seq = last_seq(data)

    second = agent("run", "--config", str(config))

    assert second.returncode == Exit.DATA_DIR_IN_USE, second.stderr
    assert second.stderr == (
        f"edgefleet-agent: {data} is in use by another agent (PID {first.proc.pid}); stop it first\n"
    )
    assert first.proc.poll() is None, first.log()
    assert wait_for_heartbeat_after(data, seq), first.log()
    # status only reads: it works while the agent runs.
    status = agent("status", "--config", str(config), "--json")
    assert status.returncode == Exit.OK, status.stderr
    first.proc.send_signal(signal.SIGTERM)
    assert first.proc.wait(timeout=60) == Exit.OK, first.log()


@pytest.mark.integration
def test_an_agent_killed_with_sigkill_does_not_block_the_next_start(
    start: Callable[[], AgentProcess], tmp_path: Path
) -> None:
    data = tmp_path / "data"
    killed = start()
    killed.proc.send_signal(signal.SIGKILL)
    killed.proc.wait(timeout=30)
    assert (data / LOCK_NAME).read_text() == f"{killed.proc.pid}\n"

    after = start()

    assert after.proc.poll() is None, after.log()
    assert (data / LOCK_NAME).read_text() == f"{after.proc.pid}\n"
    assert wait_for_heartbeat_after(data, last_seq(data)), after.log()


@pytest.mark.integration
def test_enroll_into_a_data_dir_in_use_is_refused_before_the_token_is_spent(
    tmp_path: Path, holder: subprocess.Popen[str]
) -> None:
    # Nothing listens on port 9: had enroll tried the server, it would exit UNREACHABLE.
    result = agent(
        "enroll",
        "--server",
        "http://127.0.0.1:9",
        "--token",
        "efe_unused",
        "--name",
        "cam-2",
        "--config",
        str(tmp_path / "agent.toml"),
        "--data-dir",
        str(tmp_path / "data"),
    )
    assert result.returncode == Exit.DATA_DIR_IN_USE, result.stderr
    assert result.stderr == (
        f"edgefleet-agent: {tmp_path / 'data'} is in use by another agent (PID {holder.pid}); stop it first\n"
    )
    assert not (tmp_path / "agent.toml").exists()

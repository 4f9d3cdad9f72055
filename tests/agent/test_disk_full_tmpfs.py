"""A real full disk under the running agent: a small tmpfs as its data directory, filled to the last page.

test_outbox_full_disk.py makes SQLite report SQLITE_FULL through
``max_page_count``; here the filesystem itself refuses the write (ENOSPC), as
on a device whose card filled up. The whole agent runs, as ``run`` wires it:
the pipeline decides frames from a folder, windows and heartbeats go into the
outbox, the MQTT link forwards them to a stand-in control plane that
acknowledges them. The disk fills while the control plane is away, as it does
on a device whose backlog grows through an outage. Inference must go on, the
outbox must hold and drop (and count what it drops), no thread may die, and
once the filler is deleted everything held must reach the control plane
without a restart.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cv2
import pytest

from agent.escalation import DiskQueue
from agent.inference import ModelSession, SessionHolder
from agent.kernel import protocol
from agent.outbox import Outbox
from agent.pipeline import PipelineComponent
from agent.runtime import Runtime
from tests.agent.conftest import GREEN, RED, solid
from tests.agent.helpers import make_agent_config
from tests.brokers import clear_retained
from tests.fakes import MqttControlPlane, TelemetryStore
from tests.fleet.broker.clients import Probe

pytestmark = pytest.mark.integration

# Room for the outbox's write-ahead log (agent.outbox.WAL_CHECKPOINT_PAGES) once the filler is gone.
DISK_KIB = 4096
# The default (1 MiB) takes hours of windows to fill; a few seconds' worth shows the same policy.
MAX_HELD_BYTES = 4096
TIMEOUT = 15


@contextlib.contextmanager
def small_disk(mount: Path, size_kib: int) -> Iterator[Path]:
    """A tmpfs of ``size_kib`` mounted on ``mount``, unmounted on the way out whatever happened."""
    mount.mkdir()
    try:
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size_kib}k,mode=0700", "tmpfs", str(mount)],
            check=True,
            capture_output=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        detail = getattr(exc, "stderr", b"") or b""
        pytest.skip(f"cannot mount a tmpfs (needs root or CAP_SYS_ADMIN): {exc} {detail.decode(errors='replace')}")
    try:
        yield mount
    finally:
        if subprocess.run(["umount", str(mount)], capture_output=True, timeout=10).returncode != 0:
            subprocess.run(["umount", "-l", str(mount)], capture_output=True, timeout=10)


def fill(disk: Path) -> Path:
    """Write a filler file until the filesystem refuses one more page."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        chunk = b"\0" * 4096
        while True:
            try:
                os.write(fd, chunk)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                return filler
    finally:
        os.close(fd)


def eventually(predicate: Callable[[], bool], timeout: float = TIMEOUT) -> bool:
    # The agent's counters announce nothing; look at them often.
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def test_the_outboxs_own_log_leaves_a_small_disk_room_to_commit_on(tmp_path: Path) -> None:
    # Some 15 KiB of log a commit: SQLite's default checkpoint (1,000 pages, ~4 MiB) came only after the log
    # had filled this disk, and with it full no commit could trigger that checkpoint any more.
    with small_disk(tmp_path / "data", 2048) as disk:
        box = Outbox(disk / "outbox.db", commit_interval_s=3600)
        try:
            for _ in range(400):
                box.append("window", {"frames": 1, "note": "x" * 300})
                box.commit()
                box.ack(box.committed_seq)
            assert (box.committed_seq, box.dropped_total) == (400, 0)
        finally:
            box.close()


def test_an_escalated_frame_the_disk_refuses_leaves_no_partial_file_behind(tmp_path: Path) -> None:
    with small_disk(tmp_path / "data", 256) as disk:
        queue = DiskQueue(disk / "escalations", max_bytes=1024 * 1024)
        filler = fill(disk)
        with filler.open("r+b") as f:  # two pages of room: the frame below needs five
            f.truncate(filler.stat().st_size - 8192)
        free = shutil.disk_usage(disk).free

        with pytest.raises(OSError) as refused:
            queue.put({"frame": "f1"}, b"x" * 20_000)

        assert refused.value.errno == errno.ENOSPC
        assert list(queue.directory.iterdir()) == [] and len(queue) == 0
        assert shutil.disk_usage(disk).free == free, "the half-written frame gave its room back"


def test_the_agent_keeps_inferring_on_a_full_disk_drops_and_counts_what_it_cannot_hold_and_recovers_by_itself(
    tmp_path: Path, mqtt_url: str, colour_model: ModelSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    died: list[str] = []

    def record(args: Any) -> None:
        died.append(f"{args.thread.name if args.thread else '?'}: {args.exc_type.__name__}: {args.exc_value}")

    monkeypatch.setattr(threading, "excepthook", record)
    frames = tmp_path / "frames"
    frames.mkdir()
    cv2.imwrite(str(frames / "a.png"), solid(RED))
    cv2.imwrite(str(frames / "b.png"), solid(GREEN))
    device_id = f"dev-diskfull-{uuid.uuid4().hex[:8]}"
    with small_disk(tmp_path / "data", DISK_KIB) as disk:
        config = make_agent_config(
            disk,
            mqtt_url=mqtt_url,
            device_id=device_id,
            agent={"heartbeat_interval_s": 1},
            capture={"source": str(frames), "max_fps": 20, "loop": True},
            vision={"window_interval_s": 0.1},
            # No escalation server here: its queued uploads would hold the telemetry backlog back after a connect.
            escalation={"enabled": False},
            # What was in flight when the control plane went away is sent again soon after it is back.
            outbox={"resend_after_s": 1},
        )
        component = PipelineComponent.build(config, SessionHolder(colour_model))
        pipeline = component.pipeline
        runtime = Runtime(config, components=[component])
        outbox = runtime.outbox
        outbox.max_held_bytes = MAX_HELD_BYTES
        store = TelemetryStore()
        cloud = MqttControlPlane(mqtt_url, device_id, store=store)
        events = Probe(mqtt_url, None, None, client_id=f"events-{device_id}")
        assert not events.connect().is_failure
        assert not events.subscribe(protocol.topic(device_id, "events")).is_failure
        exit_code: list[int] = []
        agent = threading.Thread(target=lambda: exit_code.append(runtime.run()), name="agent-run")
        agent.start()
        try:
            assert store.wait_until(lambda s: s.contiguous >= 3, TIMEOUT), "nothing forwarded on a healthy disk"

            # The control plane goes away and the disk fills up: the backlog needs room the disk no longer has.
            cloud.close()
            filler = fill(disk)
            assert shutil.disk_usage(disk).free < 4096
            inferred_at_full = pipeline.inferred

            # Records are held in memory, then the oldest dropped and counted; frames are still decided.
            assert eventually(lambda: outbox.dropped_total > 0), f"nothing dropped: {outbox.stats()}"
            committed_while_full = outbox.committed_seq
            assert eventually(lambda: pipeline.inferred >= inferred_at_full + 20), "inference stalled"
            assert outbox.committed_seq == committed_while_full, "the disk took a commit while full"
            stats = outbox.stats()
            assert stats.last_seq - committed_while_full > stats.dropped_total, "some records are still held"
            # The drop is reported at once, beside the outbox (events are not kept in it).
            assert events.wait(
                lambda: any(b"buffer_overflow" in p for p in events.received(protocol.topic(device_id, "events")))
            )

            filler.unlink()
            freed_at = outbox.stats().last_seq
            cloud = MqttControlPlane(mqtt_url, device_id, store=store)

            # The flusher writes what is held by itself and the link forwards it: no restart, no command.
            assert eventually(lambda: outbox.committed_seq >= freed_at), f"held records not written: {outbox.stats()}"
            settled = outbox.committed_seq
            dropped = outbox.dropped_total
            assert store.wait_until(lambda s: s.contiguous >= settled, TIMEOUT), (
                f"control plane acked {store.contiguous} of {settled}"
            )
            stored = {seq for seq in store.stored if seq <= settled}
            assert len(stored) + dropped == settled, "every record arrived or was counted as dropped"
            assert stored & set(range(committed_while_full + 1, freed_at + 1)), "records held while full arrived"
            assert store.conflicts == []
            # Heartbeats after recovery carry the count to the control plane.
            assert store.wait_until(
                lambda s: any(d.get("outbox_dropped_total") == dropped for d in s.records.values()), TIMEOUT
            ), f"no heartbeat reported {dropped} dropped"
            assert eventually(lambda: outbox.stats().acked_seq >= settled), "acks not applied after recovery"
            assert outbox.dropped_total == dropped, "drops went on after recovery"

            assert agent.is_alive()
            running = {t.name for t in threading.enumerate()}
            assert {"inference", "windows", "outbox-flusher"} <= running, running
        finally:
            runtime.stop()
            agent.join(TIMEOUT)
            cloud.close()
            events.close()
            clear_retained(mqtt_url, device_id)
    assert exit_code == [0]
    assert died == []

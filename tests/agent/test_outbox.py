"""The outbox keeps telemetry until the control plane acknowledges it, within a byte budget."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.kernel import protocol
from agent.outbox import DUPLICATE_ACKS_TO_RESEND, MAX_BATCH_BYTES, Outbox, OutboxError
from agent.outbox import inspect as outbox_inspect
from tests.fakes import TelemetryStore
from tests.paths import ROOT
from tests.payloads import heartbeat_data


def window(**extra: Any) -> dict[str, Any]:
    return {"frames": 10, **extra}


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "outbox.db"


@pytest.fixture
def box(path: Path) -> Iterator[Outbox]:
    outbox = Outbox(path)
    yield outbox
    outbox.close()


def seqs_on_disk(path: Path) -> list[int]:
    db = sqlite3.connect(path)
    try:
        return [row[0] for row in db.execute("SELECT seq FROM records ORDER BY seq")]
    finally:
        db.close()


def test_records_survive_closing_and_reopening_and_seqs_continue(path: Path) -> None:
    with Outbox(path) as box:
        assert [box.append("window", window(i=i)) for i in range(250)] == list(range(1, 251))
    with Outbox(path) as box:
        stats = box.stats()
        assert (stats.depth, stats.last_seq, stats.acked_seq) == (250, 250, 0)
        assert box.append("window", window()) == 251


def test_a_sent_record_stays_until_an_ack_covers_it(path: Path) -> None:
    with Outbox(path) as box:
        for i in range(10):
            box.append("window", window(i=i))
        box.commit()
        batch = box.next_batch()
        assert batch is not None and batch.seqs == list(range(1, 11))
        # Published and even PUBACKed is not stored: only the ack removes records.
        assert box.ack(4) == 4
        assert box.stats().depth == 6
    assert seqs_on_disk(path) == list(range(5, 11))
    with Outbox(path) as box:
        assert box.stats().acked_seq == 4
        batch = box.next_batch()
        assert batch is not None and batch.seqs == list(range(5, 11)) and batch.floor == 5


def test_records_are_sendable_only_once_committed(box: Outbox) -> None:
    box.commit_interval_s = 60
    box.append("window", window())
    assert box.next_batch() is None
    box.commit()
    batch = box.next_batch()
    assert batch is not None and batch.seqs == [1]


def test_the_flusher_commits_within_the_interval_without_being_asked(path: Path) -> None:
    import threading

    committed = threading.Event()
    with Outbox(path, commit_interval_s=0.02, on_commit=committed.set) as box:
        box.append("window", window())
        assert committed.wait(10)
        assert seqs_on_disk(path) == [1]


def test_records_in_flight_are_not_sent_twice_until_requeued(box: Outbox) -> None:
    for i in range(30):
        box.append("window", window(i=i))
    box.commit()
    first = box.next_batch()
    assert first is not None and len(first.seqs) == 30
    assert box.next_batch() is None
    box.requeue()
    again = box.next_batch()
    assert again is not None and again.seqs == first.seqs


def test_bad_records_get_a_clear_error_and_consume_no_seq(box: Outbox) -> None:
    with pytest.raises(OutboxError, match="kind"):
        box.append("selfie", {})
    with pytest.raises(OutboxError, match="heartbeat"):
        box.append("heartbeat", {"uptime_s": -1})
    with pytest.raises(OutboxError, match="exceeds"):
        box.append("window", {"blob": "x" * protocol.MAX_PAYLOAD_BYTES})
    assert box.append("window", window()) == 1
    assert box.stats().depth == 1


def test_when_full_the_oldest_records_of_the_lowest_priority_go_first(path: Path) -> None:
    pad = "x" * 1000
    with Outbox(path, max_bytes=64 * 1024, commit_records=10_000) as box:
        kinds: dict[int, str] = {}
        for i in range(60):
            kinds[box.append("heartbeat", heartbeat_data(pad=pad))] = "heartbeat"
            if i % 2 == 0:
                kinds[box.append("window", window(pad=pad))] = "window"
        box.commit()
        stats = box.stats()
        kept = seqs_on_disk(path)
        heartbeats = [s for s in kinds if kinds[s] == "heartbeat"]
        # Every window survives; the heartbeats that went are the oldest ones.
        assert all(s in kept for s in kinds if kinds[s] == "window")
        kept_beats = [s for s in heartbeats if s in kept]
        assert kept_beats == heartbeats[len(heartbeats) - len(kept_beats) :] and kept_beats
        assert stats.dropped_total == len(kinds) - len(kept) > 0
        assert stats.bytes <= 64 * 1024 and stats.depth == len(kept)
    with Outbox(path) as box:
        assert box.stats().dropped_total == len(kinds) - len(kept)


def test_the_floor_lets_the_ack_step_over_dropped_records(path: Path) -> None:
    pad = "x" * 1000
    with Outbox(path, max_bytes=64 * 1024, commit_records=10_000) as box:
        for _ in range(40):
            box.append("heartbeat", heartbeat_data(pad=pad))
            box.append("window", window(pad=pad))
        box.commit()
        kept = seqs_on_disk(path)
        batch = box.next_batch()
        assert batch is not None
        # Every seq below the floor was dropped (nothing was acked yet).
        assert batch.floor == kept[0] > 1 and batch.message.floor == batch.floor
        assert protocol.decode("telemetry", batch.payload) == batch.message
        # The control plane stored the batch but its ack stopped at a gap of
        # dropped heartbeats: the outbox resends its lowest record with a new floor.
        gap = next(s for s in kept if s + 1 not in kept and s != kept[-1])
        box.ack(gap)
        nudge = box.next_batch()
        assert nudge is not None and nudge.seqs == [min(s for s in kept if s > gap)]
        assert nudge.floor == nudge.seqs[0]
        assert box.next_batch() is None


def test_batches_respect_the_record_count_and_payload_limits(path: Path) -> None:
    with Outbox(path, max_in_flight=100_000) as box:
        for i in range(2500):
            box.append("window", window(i=i))
        for _ in range(8):
            box.append("window", window(blob="y" * 100_000))
        box.commit()
        sizes, seen = [], []
        while (batch := box.next_batch()) is not None:
            assert len(batch.seqs) <= protocol.MAX_BATCH_RECORDS
            assert len(batch.payload) <= protocol.MAX_PAYLOAD_BYTES
            protocol.decode("telemetry", batch.payload)
            sizes.append(len(batch.payload))
            seen += batch.seqs
        assert sorted(seen) == list(range(1, 2509)) and len(set(seen)) == len(seen)
        assert max(sizes) <= MAX_BATCH_BYTES + 1024


def test_a_backlog_drains_in_full_batches_while_the_newest_records_still_go_first(path: Path) -> None:
    with Outbox(path, max_in_flight=100_000, live_share=0.1) as box:
        for i in range(5000):
            box.append("window", window(i=i))
        box.commit()
        first = box.next_batch()
        assert first is not None and len(first.seqs) == protocol.MAX_BATCH_RECORDS
        # The oldest records and the newest share the batch: live telemetry is not stuck behind the outage.
        assert 1 in first.seqs and 5000 in first.seqs
        assert sum(1 for s in first.seqs if s > 4000) == 100
        # New live records produced during the drain ride in the next batch.
        live = box.append("window", window(live=True))
        box.commit()
        second = box.next_batch()
        assert second is not None and live in second.seqs and len(second.seqs) == protocol.MAX_BATCH_RECORDS


def test_the_in_flight_window_bounds_what_is_on_the_wire(path: Path) -> None:
    with Outbox(path, max_in_flight=1500) as box:
        for i in range(4000):
            box.append("window", window(i=i))
        box.commit()
        sent = []
        while (batch := box.next_batch()) is not None:
            sent += batch.seqs
        # The backlog fills its part; live_share (10 %) of the window stays
        # for live records, of which the first batch took the newest 100.
        assert len(sent) == 1350 + 100
        live = box.append("window", window(live=True))
        box.commit()
        batch = box.next_batch()
        assert batch is not None and batch.seqs == [live]
        box.ack(1000)
        more = box.next_batch()
        assert more is not None and len(more.seqs) <= 1000


def test_an_ack_beyond_anything_committed_moves_the_records_above_it(path: Path) -> None:
    # The control plane already holds seqs up to 5000 from before this outbox was reset.
    with Outbox(path) as box:
        for i in range(3):
            box.append("window", window(i=i))
        box.commit()
        box.ack(5000)
        assert box.append("window", window()) == 5004
        box.commit()
        batch = box.next_batch()
        assert batch is not None and batch.seqs == [5001, 5002, 5003, 5004] and batch.floor == 5001
        assert [r.data.get("i") for r in batch.message.records[:3]] == [0, 1, 2]


_WRITER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from agent.outbox import Outbox

    box = None
    def committed():
        print("c", box.committed_seq, box.stats().acked_seq, flush=True)
    box = Outbox(Path(sys.argv[1]), commit_interval_s=0.005, commit_records=50, on_commit=committed)
    i = 0
    while True:
        seq = box.append("window", {"i": i, "pad": "z" * (i % 300)})
        i += 1
        if i % 170 == 0:
            box.ack(max(0, box.committed_seq - 400))
    """
)


def test_kill_9_mid_write_loses_nothing_committed_and_never_repeats_a_seq(path: Path) -> None:
    previous_top = 0
    for round_ in range(6):
        child = subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(path)], cwd=ROOT, stdout=subprocess.PIPE, text=True
        )
        assert child.stdout is not None
        committed = 0
        for line in child.stdout:
            committed = int(line.split()[1])
            if committed >= previous_top + 300 + 97 * round_:
                break
        child.send_signal(signal.SIGKILL)
        child.wait()
        # Lines printed before the kill that were not read yet still count.
        for line in child.stdout.read().splitlines():
            parts = line.split()
            if len(parts) == 3:
                committed = max(committed, int(parts[1]))
        child.stdout.close()
        db = sqlite3.connect(path)
        try:
            assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            rows = db.execute("SELECT seq, body FROM records ORDER BY seq").fetchall()
            acked = (db.execute("SELECT value FROM meta WHERE key = 'acked_seq'").fetchone() or (0,))[0]
        finally:
            db.close()
        seqs = [seq for seq, _ in rows]
        # Every committed, unacknowledged record is there, once, under its own seq.
        assert acked < committed and set(range(acked + 1, committed + 1)) <= set(seqs)
        assert all(json.loads(body)["seq"] == seq for seq, body in rows)
        with Outbox(path) as box:
            assert box.append("window", window()) > max(seqs[-1], committed)
            box.commit()
            previous_top = box.committed_seq


def test_status_can_read_an_outbox_that_is_absent_or_not_set_up_yet(path: Path) -> None:
    assert outbox_inspect(path) is None
    sqlite3.connect(path).close()
    stats = outbox_inspect(path)
    assert stats is not None and (stats.depth, stats.last_seq) == (0, 0)
    with Outbox(path) as box:
        box.append("window", window())
    stats = outbox_inspect(path)
    assert stats is not None and (stats.depth, stats.last_seq) == (1, 1)


def test_acks_that_stop_advancing_get_what_is_in_flight_resent_without_waiting(box: Outbox) -> None:
    for i in range(10):
        box.append("window", window(i=i))
    box.commit()
    first = box.next_batch()
    assert first is not None and first.seqs == list(range(1, 11))
    box.ack(3)
    # Later batches keep arriving but the ack stays at 3: records 4.. were lost on the way.
    for _ in range(DUPLICATE_ACKS_TO_RESEND - 1):
        box.ack(3)
        assert box.next_batch() is None
    box.ack(3)
    again = box.next_batch()
    assert again is not None and again.seqs == list(range(4, 11))


def test_a_backlog_larger_than_ten_windows_drains_in_round_trips_while_live_records_keep_going(path: Path) -> None:
    # Each round trip the device produces some live records, sends what the
    # in-flight window allows, and the control plane acks every batch. A
    # backlog that needs the resend timer (30 s) to move again would send
    # nothing for as many round trips as it takes, so the count stays bounded.
    backlog, live_per_round = 60_000, 20
    with Outbox(path, max_in_flight=5000, live_share=0.1, commit_records=10_000) as box:
        for i in range(backlog):
            box.append("window", window(i=i))
        box.commit()
        cloud = TelemetryStore()
        rounds = 0
        # At least ten times the production rate, as the drain must be.
        while cloud.contiguous < backlog:
            rounds += 1
            assert rounds <= backlog // (10 * live_per_round), f"stalled at ack {cloud.contiguous}"
            live = [box.append("window", window(live=True)) for _ in range(live_per_round)]
            box.commit()
            batches = []
            while (batch := box.next_batch()) is not None:
                batches.append(batch)
            sent = {seq for batch in batches for seq in batch.seqs}
            assert set(live) <= sent, f"round {rounds}: live records held back"
            assert any(seq <= backlog for seq in sent) or cloud.contiguous >= backlog
            for batch in batches:
                box.ack(cloud.receive(batch.message))
        # Nothing left before an ack covered it, and every record arrived.
        assert box.stats().depth == len(cloud.stored) - cloud.contiguous
        assert set(range(1, backlog + 1)) <= cloud.stored


@pytest.mark.parametrize(("max_in_flight", "live_share"), [(1, 0.1), (2, 1.0), (10, 1.0), (10, 0.0)])
def test_any_window_and_live_share_leave_the_backlog_room_to_drain(
    path: Path, max_in_flight: int, live_share: float
) -> None:
    with Outbox(path, max_in_flight=max_in_flight, live_share=live_share) as box:
        for i in range(50):
            box.append("window", window(i=i))
        box.commit()
        cloud = TelemetryStore()
        rounds = 0
        while cloud.contiguous < 50:
            rounds += 1
            assert rounds <= 100, f"stalled at ack {cloud.contiguous}"
            box.append("window", window(live=True))
            box.commit()
            batches = []
            while (batch := box.next_batch()) is not None:
                batches.append(batch)
            assert box.stats().in_flight <= max_in_flight
            for batch in batches:
                box.ack(cloud.receive(batch.message))

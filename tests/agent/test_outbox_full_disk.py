"""A full disk under the outbox: writing never fails the caller, drops are bounded and counted, recovery is by itself.

SQLite reports a full disk as SQLITE_FULL ("database or disk is full"), and so
does a database that reached its ``max_page_count``: the tests fill the
outbox's database to its limit that way, then give it room again, as an
operator freeing space (or a log rotation) would.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.outbox import Outbox
from agent.outbox import inspect as outbox_inspect
from tests.payloads import heartbeat_data

pytestmark = pytest.mark.unit

RECORD = heartbeat_data()


@pytest.fixture
def box(tmp_path: Path) -> Iterator[Outbox]:
    # Committed only when asked (no timer), so each test decides when the disk is written.
    outbox = Outbox(tmp_path / "outbox.db", commit_interval_s=3600, commit_records=10, max_held_bytes=20_000)
    yield outbox
    outbox.close()


def fill_the_disk(outbox: Outbox) -> None:
    """No page more for the database: every write that needs one now fails with SQLITE_FULL."""
    pages = outbox._db.execute("PRAGMA page_count").fetchone()[0]
    outbox._db.execute(f"PRAGMA max_page_count = {pages}")


def free_the_disk(outbox: Outbox) -> None:
    outbox._db.execute("PRAGMA max_page_count = 1073741823")


def test_appends_and_heartbeat_commits_go_on_while_the_disk_is_full_and_land_once_it_has_room(box: Outbox) -> None:
    for _ in range(5):
        box.append("heartbeat", RECORD)
    box.commit()
    fill_the_disk(box)
    with pytest.raises(sqlite3.OperationalError, match="full"):
        box._db.execute("BEGIN IMMEDIATE")
        try:
            box._db.execute("CREATE TABLE filler (x BLOB)")
            box._db.execute("INSERT INTO filler VALUES (zeroblob(100000))")
        finally:
            if box._db.in_transaction:
                box._db.execute("ROLLBACK")

    # The agent's writers: windows every few seconds, heartbeats committed at once. Nothing raises.
    for _ in range(40):
        box.append("window", {"frames": 1, "note": "x" * 300})
        box.commit()
    held = box.stats()
    assert held.last_seq == 45 and held.depth + held.dropped_total == 45
    assert outbox_inspect(box.path).last_seq < 45, "the disk took nothing more"  # type: ignore[union-attr]

    free_the_disk(box)
    box.commit()

    stats = box.stats()
    on_disk = outbox_inspect(box.path)
    assert on_disk is not None
    assert stats.depth == on_disk.depth, "everything still held went to disk"
    assert on_disk.last_seq == 45 and on_disk.dropped_total == stats.dropped_total


def test_what_is_held_in_memory_is_bounded_and_each_record_dropped_beyond_is_counted(box: Outbox) -> None:
    box.append("heartbeat", RECORD)
    box.commit()
    fill_the_disk(box)

    for _ in range(2_000):
        box.append("window", {"frames": 1, "note": "x" * 100})
    stats = box.stats()

    held_bytes = stats.bytes - (outbox_inspect(box.path).bytes)  # type: ignore[union-attr]
    assert held_bytes <= box.max_held_bytes + 200
    assert stats.dropped_total > 0
    assert stats.depth + stats.dropped_total == 2_001, "every record is either kept or counted as dropped"
    free_the_disk(box)
    box.commit()
    assert outbox_inspect(box.path).dropped_total == stats.dropped_total  # type: ignore[union-attr]


def test_the_flusher_writes_held_records_by_itself_once_the_disk_has_room(tmp_path: Path) -> None:
    written = threading.Event()
    outbox = Outbox(tmp_path / "outbox.db", commit_interval_s=0.01, on_commit=written.set)
    try:
        outbox.append("heartbeat", RECORD)
        assert written.wait(5)
        fill_the_disk(outbox)
        written.clear()
        for _ in range(20):
            outbox.append("window", {"frames": 1, "note": "x" * 3000})  # more than the pages left hold
        assert not written.wait(1.5), "nothing can be written while the disk is full"

        free_the_disk(outbox)

        assert written.wait(5), "the flusher retried on its own and wrote the held records"
        assert outbox_inspect(outbox.path).last_seq == 21  # type: ignore[union-attr]
    finally:
        outbox.close()


def test_closing_on_a_full_disk_loses_what_is_held_but_does_not_raise(box: Outbox) -> None:
    box.append("heartbeat", RECORD)
    box.commit()
    fill_the_disk(box)
    for _ in range(20):
        box.append("window", {"frames": 1, "note": "x" * 3000})

    # The agent's shutdown closes the outbox last: a full disk used to raise out of it.
    box.close()

    assert outbox_inspect(box.path).last_seq == 1  # type: ignore[union-attr]

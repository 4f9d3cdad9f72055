"""The store-and-forward outbox: telemetry records kept in SQLite until the control plane has them.

Guarantees:

* Every record gets the next per-device ``seq`` and is committed before it
  can be sent; a record leaves only when an ``ack`` from the control plane
  covers it. A broker PUBACK is not enough: the broker may not have kept it.
* Commits are batched (every ``commit_interval_s`` or ``commit_records``
  records, whichever comes first) with ``synchronous=FULL`` in WAL mode, so
  durability costs one fsync per batch, not per record. A ``kill -9`` loses
  at most the uncommitted batch, which was never sent, so no seq is ever sent
  twice with different contents.
* The store is bounded in bytes: when full, the oldest records of the lowest
  priority are dropped first, and the number dropped is counted.
* Batches carry ``floor``, the lowest seq still held: everything below it was
  acknowledged or dropped, so the control plane's contiguous ack can step
  over dropped records instead of waiting for them forever.
"""

from __future__ import annotations

import json
import logging
import math
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from agent.kernel import protocol

log = logging.getLogger(__name__)

# Higher survives longer when the outbox is full: a window summary carries
# more than a heartbeat, which the next one supersedes.
PRIORITY: dict[str, int] = {"heartbeat": 0, "window": 1}
# Room for the envelope around the records of one telemetry message.
_ENVELOPE_BYTES = 1024
MAX_BATCH_BYTES = protocol.MAX_PAYLOAD_BYTES - _ENVELOPE_BYTES
# Acks in a row that do not advance before what is in flight is sent again.
# More than one, so batches reordered between two bridges do not trigger it.
DUPLICATE_ACKS_TO_RESEND = 3
# While the disk refuses writes, say so this often (and at every drop), not at every retry.
HOLD_LOG_EVERY_S = 30.0
# The write-ahead log is folded into the database (and cut back to this size)
# every this many pages. SQLite's default, 1,000 pages, lets a new log grow to
# about 4 MiB first (some 15 KiB a commit): on a disk with less room than that
# the log filled it, and since only a commit can trigger the checkpoint that
# resets it, no commit ever went through again (measured on a 1 MiB tmpfs: 39
# commits, then none). 256 pages (1 MiB, a checkpoint about every 70 commits)
# made no difference beyond the noise to bench/outbox.py's durable rate, run
# side by side with the release before (docs/benchmarks.md, "Outbox").
WAL_CHECKPOINT_PAGES = 256

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    seq INTEGER PRIMARY KEY,
    priority INTEGER NOT NULL,
    size INTEGER NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS records_by_priority ON records (priority, seq);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


class OutboxError(ValueError):
    """A record the outbox refuses (bad kind or data, too large)."""


@dataclass(frozen=True)
class OutboxStats:
    depth: int
    bytes: int
    last_seq: int
    acked_seq: int
    dropped_total: int
    in_flight: int
    oldest_seq: int | None


@dataclass(frozen=True)
class Batch:
    """One telemetry message ready to publish; its records are now in flight."""

    seqs: list[int]
    floor: int
    message: protocol.Telemetry
    payload: bytes


class Outbox:
    """A durable, bounded queue of telemetry records. Thread-safe."""

    def __init__(
        self,
        path: Path,
        *,
        max_bytes: int = 64 * 1024 * 1024,
        commit_interval_s: float = 0.05,
        commit_records: int = 100,
        max_in_flight: int = 5000,
        resend_after_s: float = 30.0,
        live_share: float = 0.1,
        on_commit: Callable[[], None] | None = None,
        max_held_bytes: int = 1024 * 1024,
    ) -> None:
        self.path = path
        # While the disk refuses writes (full, failing), records wait in memory up to this many bytes;
        # beyond it the oldest of the lowest priority are dropped and counted, as on disk.
        self.max_held_bytes = max_held_bytes
        self._last_hold_log = 0.0
        self.max_bytes = max_bytes
        self.commit_interval_s = commit_interval_s
        self.commit_records = commit_records
        self.max_in_flight = max_in_flight
        self.resend_after_s = resend_after_s
        self.live_share = live_share
        # Called (with the lock held: it must only signal) after each commit
        # that made new records sendable.
        self.on_commit = on_commit
        self.max_record_bytes = min(MAX_BATCH_BYTES, max_bytes)
        self._cond = threading.Condition(threading.RLock())
        self._pending: list[tuple[int, int, int, str]] = []
        self._first_pending_at = 0.0
        self._closing = False
        # seq -> monotonic time it was handed out in a batch.
        self._in_flight: dict[int, float] = {}
        # Highest seq sent by the oldest-first stream since the last requeue.
        self._cursor = 0
        # Highest seq sent by the live share since the last requeue: later
        # live shares take only records above it (see _choose).
        self._live_top = 0
        self._nudge = False
        self._dup_acks = 0
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        # FULL: a commit is on disk when it returns; batching keeps that cheap.
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.execute(f"PRAGMA wal_autocheckpoint={WAL_CHECKPOINT_PAGES}")
        self._db.execute(f"PRAGMA journal_size_limit={WAL_CHECKPOINT_PAGES * 4096}")  # after a large ack or drain
        self._db.executescript(_SCHEMA)
        meta = dict(self._db.execute("SELECT key, value FROM meta").fetchall())
        top, self._count, self._bytes = self._db.execute(
            "SELECT COALESCE(MAX(seq), 0), COUNT(*), COALESCE(SUM(size), 0) FROM records"
        ).fetchone()
        # Never reuse a seq: the counter outlives the records it numbered.
        self._last_seq = max(int(meta.get("last_seq", 0)), int(top))
        self._next_seq = self._last_seq + 1
        self._acked_seq = int(meta.get("acked_seq", 0))
        self._dropped_total = int(meta.get("dropped_total", 0))
        self._flusher = threading.Thread(target=self._flush_loop, name="outbox-flusher", daemon=True)
        self._flusher.start()

    # --- writing ---------------------------------------------------------------

    def append(
        self, kind: str, data: Mapping[str, Any], *, ts: datetime | None = None, priority: int | None = None
    ) -> int:
        """Queue a record and return its seq; it becomes durable and sendable at the next commit."""
        with self._cond:
            if self._closing:
                raise OutboxError("the outbox is closed")
            seq = self._next_seq
            try:
                record = protocol.TelemetryRecord(seq=seq, kind=kind, ts=ts or protocol.utcnow(), data=dict(data))  # type: ignore[arg-type]
                if record.kind == "heartbeat":
                    protocol.heartbeat_of(record)
            except ValidationError as exc:
                first = exc.errors()[0]
                where = ".".join(str(p) for p in first["loc"])
                raise OutboxError(f"bad telemetry record: {where}: {first['msg']}") from None
            except protocol.ProtocolError as exc:
                raise OutboxError(f"bad telemetry record: {exc}") from None
            body = record.model_dump_json(exclude_none=True)
            size = len(body.encode("utf-8"))
            if size > self.max_record_bytes:
                raise OutboxError(f"telemetry record of {size} bytes exceeds {self.max_record_bytes}")
            self._next_seq += 1
            if not self._pending:
                self._first_pending_at = time.monotonic()
                self._cond.notify_all()
            self._pending.append((seq, PRIORITY.get(kind, 0) if priority is None else priority, size, body))
            if len(self._pending) >= self.commit_records:
                self._commit_or_hold()
            return seq

    def commit(self) -> None:
        """Make every appended record durable now; while the disk refuses, they are held (``_hold``)."""
        with self._cond:
            self._commit_or_hold()

    def _commit_or_hold(self) -> bool:
        """Commit the pending records; on a disk that refuses writes keep them in memory. Returns whether written."""
        try:
            self._commit_locked()
        except sqlite3.Error as exc:
            self._hold(exc)
            return False
        return True

    def _hold(self, exc: sqlite3.Error) -> None:
        """Keep the pending records in memory within ``max_held_bytes``: beyond it drop the oldest of the lowest
        priority, counted in ``dropped_total`` (written with the next commit). Inference and the agent go on;
        the flusher retries every second, so the records go to disk by themselves once it has room again."""
        held = sum(r[2] for r in self._pending)
        excess = held - self.max_held_bytes
        dropped = 0
        if excess > 0:
            order = sorted(range(len(self._pending)), key=lambda i: (self._pending[i][1], self._pending[i][0]))
            gone: set[int] = set()
            freed = 0
            for index in order:
                if freed >= excess:
                    break
                gone.add(index)
                freed += self._pending[index][2]
            self._pending = [row for index, row in enumerate(self._pending) if index not in gone]
            dropped = len(gone)
            self._dropped_total += dropped
            held -= freed
        now = time.monotonic()
        if dropped or now - self._last_hold_log >= HOLD_LOG_EVERY_S:
            self._last_hold_log = now
            log.warning(
                "outbox cannot write to its disk: records held in memory",
                extra={"error": str(exc), "held": len(self._pending), "held_bytes": held, "dropped": dropped},
            )

    def _commit_locked(self) -> None:
        if not self._pending:
            return
        rows, self._pending = self._pending, []
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.executemany("INSERT INTO records (seq, priority, size, body) VALUES (?, ?, ?, ?)", rows)
            last = rows[-1][0]
            self._set_meta("last_seq", last)
            added = sum(r[2] for r in rows)
            excess = self._bytes + added - self.max_bytes
            dropped = self._shed(excess) if excess > 0 else (0, 0)
            # Records dropped while the disk refused writes (``_hold``) are counted here too.
            self._set_meta("dropped_total", self._dropped_total + dropped[0])
            self._db.execute("COMMIT")
        except BaseException:
            # A full disk may have rolled the transaction back already (SQLITE_FULL does).
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            # Keep the records for the next attempt; their seqs are still unused on disk.
            self._pending = rows + self._pending
            raise
        self._last_seq = last
        self._count += len(rows) - dropped[0]
        self._bytes += added - dropped[1]
        if dropped[0]:
            self._dropped_total += dropped[0]
            log.warning(
                "outbox full",
                extra={"dropped": dropped[0], "dropped_total": self._dropped_total, "max_bytes": self.max_bytes},
            )
        if self.on_commit is not None:
            self.on_commit()

    def _shed(self, excess: int) -> tuple[int, int]:
        """Drop the oldest records of the lowest priority until ``excess`` bytes are freed (in the open transaction)."""
        freed = count = 0
        last: tuple[int, int] | None = None
        rows = self._db.execute("SELECT seq, priority, size FROM records ORDER BY priority, seq")
        try:
            for seq, priority, size in rows:
                freed += size
                count += 1
                last = (priority, seq)
                if freed >= excess:
                    break
        finally:
            rows.close()
        if last is None:
            return 0, 0
        self._db.execute(
            "DELETE FROM records WHERE priority < ? OR (priority = ? AND seq <= ?)", (last[0], last[0], last[1])
        )
        self._set_meta("dropped_total", self._dropped_total + count)
        return count, freed

    def _set_meta(self, key: str, value: int) -> None:
        self._db.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    def _flush_loop(self) -> None:
        with self._cond:
            while not self._closing:
                if not self._pending:
                    self._cond.wait()
                    continue
                delay = self._first_pending_at + self.commit_interval_s - time.monotonic()
                if delay > 0:
                    self._cond.wait(delay)
                    continue
                if not self._commit_or_hold():
                    # The records stay pending; a full or failing disk must not kill the thread.
                    self._cond.wait(1.0)

    # --- sending ---------------------------------------------------------------

    def next_batch(
        self, *, max_records: int = protocol.MAX_BATCH_RECORDS, max_bytes: int = MAX_BATCH_BYTES
    ) -> Batch | None:
        """The next records to send, oldest first with a share for the newest; None when nothing is due.

        The records returned count as in flight until acknowledged, requeued,
        or left unacknowledged for ``resend_after_s``.
        """
        with self._cond:
            now = time.monotonic()
            if self._in_flight and now - min(self._in_flight.values()) > self.resend_after_s:
                log.info("outbox resend", extra={"in_flight": len(self._in_flight), "reason": "no_ack"})
                self._requeue_locked()
            if not self._count:
                return None
            chosen = self._choose(min(max_records, protocol.MAX_BATCH_RECORDS), max_bytes)
            if not chosen:
                if not self._nudge:
                    return None
                # The control plane's ack stopped below a gap of dropped
                # records: resend the lowest one so the batch carries a floor
                # that lets the ack step over the gap. This ignores the
                # in-flight window, which the records stored past the gap may
                # fill: only the nudge can free it.
                row = self._db.execute("SELECT seq, body FROM records ORDER BY seq LIMIT 1").fetchone()
                if row is None:
                    return None
                chosen = [row]
            self._nudge = False
            floor = self._db.execute("SELECT MIN(seq) FROM records").fetchone()[0]
            chosen.sort()
            text = '{"v":1,"type":"telemetry","records":[' + ",".join(b for _, b in chosen) + f'],"floor":{floor}}}'
            message = protocol.Telemetry.model_validate_json(text)
            for seq, _ in chosen:
                self._in_flight[seq] = now
            return Batch(seqs=[s for s, _ in chosen], floor=floor, message=message, payload=protocol.encode(message))

    def _choose(self, size: int, max_bytes: int) -> list[tuple[int, str]]:
        chosen: dict[int, str] = {}
        used = 0
        # Records sent ahead of the oldest-first stream (the live share) cannot
        # be covered by the contiguous ack until that stream reaches them, so
        # they stay in flight for the whole drain. Sharing one window with the
        # backlog, they used to fill it (5,000 in a 45,000-record drain) and
        # starve the backlog until resend_after_s. So they get their own part
        # of the window, live_share of it, and the backlog always keeps the
        # rest: the total on the wire stays within max_in_flight.
        ahead = sum(1 for seq in self._in_flight if seq > self._cursor)
        live_part = round(self.max_in_flight * self.live_share)
        if self.live_share > 0:
            live_part = max(live_part, 1)
        # Even with live_share=1 the backlog keeps room, or it could never drain.
        live_part = min(live_part, self.max_in_flight - 1)
        live_room = live_part - ahead
        backlog_room = self.max_in_flight - len(self._in_flight) - max(0, live_room)

        def take(sql: str, floor: int, limit: int) -> None:
            nonlocal used
            # Rows already in flight are skipped, so read past them; above
            # the cursor those are only the live share of earlier batches.
            rows = self._db.execute(sql, (floor, limit + ahead)).fetchall()
            for seq, size, body in rows:
                if len(chosen) >= limit or used + size + 1 > max_bytes:
                    return
                if seq in self._in_flight or seq in chosen:
                    continue
                chosen[seq] = body
                used += size + 1

        # Live share first: the newest records the backlog stream has not
        # reached. After the first batch only records newer than the last live
        # share qualify: what was already queued is backlog, and eating it
        # from the top would only spend the live part of the window on
        # records that are not live.
        live = min(math.ceil(size * self.live_share), live_room)
        if live > 0:
            take(
                "SELECT seq, size, body FROM records WHERE seq > ? ORDER BY seq DESC LIMIT ?",
                max(self._cursor, self._live_top),
                live,
            )
        live_seqs = set(chosen)
        if live_seqs:
            self._live_top = max(self._live_top, max(live_seqs))
        if backlog_room > 0:
            take(
                "SELECT seq, size, body FROM records WHERE seq > ? ORDER BY seq LIMIT ?",
                self._cursor,
                min(size, len(chosen) + backlog_room),
            )
        backlog = [s for s in chosen if s not in live_seqs]
        if backlog:
            self._cursor = max(self._cursor, max(backlog))
        return list(chosen.items())

    def requeue(self) -> None:
        """Forget what is in flight so it is sent again (after a reconnect)."""
        with self._cond:
            self._requeue_locked()

    def _requeue_locked(self) -> None:
        self._in_flight.clear()
        self._cursor = 0
        self._live_top = 0
        self._nudge = False
        self._dup_acks = 0

    def ack(self, seq: int) -> int:
        """Apply the control plane's acknowledgement; returns how many records left the outbox."""
        with self._cond:
            self._commit_or_hold()
            if seq > self._last_seq:
                self._renumber_locked(seq)
                return 0
            if seq <= self._acked_seq:
                # An ack that does not advance while later records are in
                # flight means the control plane got those but misses earlier
                # ones (lost when a bridge was not subscribed yet, say): resend
                # now, as TCP's fast retransmit does, not after resend_after_s.
                lowest = self._db.execute("SELECT MIN(seq) FROM records").fetchone()[0]
                # Only a record we hold and sent can be missing there; above a
                # gap of dropped records the floor nudge is what helps.
                if lowest == seq + 1 and lowest in self._in_flight:
                    self._dup_acks += 1
                    if self._dup_acks >= DUPLICATE_ACKS_TO_RESEND:
                        log.info("outbox resend", extra={"in_flight": len(self._in_flight), "reason": "duplicate_acks"})
                        self._requeue_locked()
                return 0
            self._dup_acks = 0
            self._db.execute("BEGIN IMMEDIATE")
            try:
                count, size = self._db.execute(
                    "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM records WHERE seq <= ?", (seq,)
                ).fetchone()
                self._db.execute("DELETE FROM records WHERE seq <= ?", (seq,))
                acked = max(self._acked_seq, seq)
                self._set_meta("acked_seq", acked)
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
            self._acked_seq = acked
            self._count -= count
            self._bytes -= size
            for done in [s for s in self._in_flight if s <= seq]:
                del self._in_flight[done]
            lowest = self._db.execute("SELECT MIN(seq) FROM records").fetchone()[0]
            self._nudge = lowest is not None and lowest > seq + 1 and lowest in self._in_flight
            return int(count)

    def _renumber_locked(self, acked: int) -> None:
        # The control plane has stored seqs we never committed: this outbox
        # was reset or restored from a backup. Those seqs are taken there, so
        # what we still hold moves above them rather than be discarded as duplicates.
        log.warning("outbox renumbered", extra={"acked": acked, "last_seq": self._last_seq})
        offset = acked - (self._db.execute("SELECT COALESCE(MIN(seq), ?) FROM records", (acked,)).fetchone()[0]) + 1
        rows = self._db.execute("SELECT seq, body FROM records ORDER BY seq").fetchall()
        self._db.execute("BEGIN IMMEDIATE")
        try:
            for seq, body in reversed(rows):
                document = json.loads(body)
                document["seq"] = seq + offset
                self._db.execute(
                    "UPDATE records SET seq = ?, body = ? WHERE seq = ?", (seq + offset, json.dumps(document), seq)
                )
            last = max(acked, self._last_seq + offset if rows else acked)
            self._set_meta("last_seq", last)
            self._set_meta("acked_seq", acked)
            self._db.execute("COMMIT")
        except BaseException:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise
        self._last_seq, self._acked_seq = last, acked
        self._next_seq = last + 1
        self._requeue_locked()

    # --- state -------------------------------------------------------------------

    def stats(self) -> OutboxStats:
        with self._cond:
            oldest = self._db.execute("SELECT MIN(seq) FROM records").fetchone()[0]
            if oldest is None and self._pending:
                oldest = self._pending[0][0]
            return OutboxStats(
                depth=self._count + len(self._pending),
                bytes=self._bytes + sum(r[2] for r in self._pending),
                last_seq=self._next_seq - 1,
                acked_seq=self._acked_seq,
                dropped_total=self._dropped_total,
                in_flight=len(self._in_flight),
                oldest_seq=oldest,
            )

    @property
    def committed_seq(self) -> int:
        """The highest seq on disk: everything up to it survives a crash unless acknowledged."""
        return self._last_seq

    @property
    def dropped_total(self) -> int:
        return self._dropped_total

    def close(self) -> None:
        """Commit what is pending and close the database."""
        with self._cond:
            if self._closing:
                return
            self._closing = True
            self._cond.notify_all()
        self._flusher.join(timeout=5)
        with self._cond:
            try:
                # A full disk costs what is still held, not the shutdown.
                if not self._commit_or_hold():
                    log.error("outbox closed with records it could not write", extra={"lost": len(self._pending)})
            finally:
                self._db.close()

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def inspect(path: Path) -> OutboxStats | None:
    """Read an outbox's state without writing (for ``edgefleet-agent status``); None if absent."""
    if not path.exists():
        return None
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if not {"records", "meta"} <= tables:
            # Created a moment ago by an agent that has not written its schema yet.
            return OutboxStats(depth=0, bytes=0, last_seq=0, acked_seq=0, dropped_total=0, in_flight=0, oldest_seq=None)
        meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
        count, size, oldest, top = db.execute(
            "SELECT COUNT(*), COALESCE(SUM(size), 0), MIN(seq), COALESCE(MAX(seq), 0) FROM records"
        ).fetchone()
    finally:
        db.close()
    return OutboxStats(
        depth=int(count),
        bytes=int(size),
        last_seq=max(int(meta.get("last_seq", 0)), int(top)),
        acked_seq=int(meta.get("acked_seq", 0)),
        dropped_total=int(meta.get("dropped_total", 0)),
        in_flight=0,
        oldest_seq=oldest,
    )

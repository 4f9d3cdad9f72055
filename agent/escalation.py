"""Escalation client: low-confidence frames go to the cloud, without delaying the local decision.

``offer`` runs on the inference thread and only compares, counts and hands
the frame over. A writer thread JPEG-encodes it into a disk queue bounded in
bytes (the oldest frame is dropped and counted when full, and the queue
survives a restart); an uploader thread sends the oldest queued frame to
``POST {server}/api/v1/escalations/`` as multipart (frame + JSON metadata)
with the device's HTTP Basic credentials, held to a bandwidth budget, and
retries with exponential backoff while the server or the link is down.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import random
import ssl
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from agent.capture import Frame
from agent.config import EscalationSettings
from agent.kernel import protocol
from agent.kernel.decode import Result

log = logging.getLogger(__name__)

ENDPOINT = "/api/v1/escalations/"
SUFFIX = ".esc"
# The cloud's answers, one JSON line each beside the queue; past this size the file moves to ``.1``.
ANSWERS = "answers.jsonl"
ANSWERS_MAX_BYTES = 1024 * 1024
# The newest answers' escalation ids, to keep a redelivered answer once.
ANSWERS_REMEMBERED = 1000
# Answers that will not change on a retry: the frame is dropped (and counted)
# rather than blocking the queue forever. 408 and 429 mean "later".
PERMANENT_STATUSES = frozenset(range(400, 500)) - {408, 429}


class TokenBucket:
    """``rate`` tokens per second, at most ``capacity`` saved up."""

    def __init__(self, rate: float, capacity: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.capacity = capacity
        self._clock = clock
        self._tokens = capacity
        self._last = clock()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.capacity, self._tokens + (now - self._last) * self.rate)
        self._last = now

    def try_take(self, n: float = 1.0) -> bool:
        self._refill()
        if self._tokens >= n:
            self._tokens -= n
            return True
        return False

    def take(self, n: float) -> None:
        """Take ``n`` tokens even into debt: a frame bigger than the bucket still goes, then pays."""
        self._refill()
        self._tokens -= n

    def wait_time(self) -> float:
        """Seconds until the bucket is out of debt."""
        self._refill()
        return max(0.0, -self._tokens / self.rate)


@dataclass
class EscalationCounters:
    offered: int = 0
    """Results below the threshold."""
    rate_limited: int = 0
    queued: int = 0
    """Frames written to the disk queue."""
    dropped: int = 0
    """Frames lost to a full hand-off or a full disk queue (oldest first)."""
    uploaded: int = 0
    failed_attempts: int = 0
    rejected: int = 0
    """Frames the server refused for good (4xx)."""
    bytes_sent: int = 0
    fallback: int = 0
    """Confident frames taken as fallback samples (``fallback_share``)."""
    answered: int = 0
    """Cloud answers received (``escalation_result`` commands)."""
    agreed: int = 0
    """Of those, the ones whose label is the device's own."""


class DiskQueue:
    """Escalated frames on disk, oldest first, bounded in bytes.

    One file per frame: a JSON metadata line, then the JPEG bytes. Files are
    written beside and renamed into place, so a crash leaves whole items only.
    """

    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        directory.mkdir(parents=True, exist_ok=True)
        for stray in directory.glob("*.tmp"):
            stray.unlink(missing_ok=True)
        self._items: deque[tuple[Path, int]] = deque(
            (path, path.stat().st_size) for path in sorted(directory.glob(f"*{SUFFIX}"))
        )
        self._bytes = sum(size for _, size in self._items)
        self._seq = int(self._items[-1][0].stem) if self._items else 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    @property
    def size_bytes(self) -> int:
        with self._lock:
            return self._bytes

    def put(self, metadata: dict[str, Any], jpeg: bytes) -> int:
        """Store one item; returns how many old items were dropped to make room (-1: too big)."""
        data = json.dumps(metadata, separators=(",", ":")).encode() + b"\n" + jpeg
        if len(data) > self.max_bytes:
            return -1
        with self._lock:
            self._seq += 1
            path = self.directory / f"{self._seq:016d}{SUFFIX}"
        tmp = path.with_suffix(".tmp")
        try:
            tmp.write_bytes(data)
            os.replace(tmp, path)
        except OSError:
            # A full disk leaves part of the file behind: give its room back now, not at the next start.
            tmp.unlink(missing_ok=True)
            raise
        dropped = 0
        with self._lock:
            self._items.append((path, len(data)))
            self._bytes += len(data)
            while self._bytes > self.max_bytes and len(self._items) > 1:
                old, size = self._items.popleft()
                old.unlink(missing_ok=True)
                self._bytes -= size
                dropped += 1
        return dropped

    def peek(self) -> tuple[Path, dict[str, Any], bytes] | None:
        """The oldest item, left in the queue; an unreadable one is discarded."""
        while True:
            with self._lock:
                if not self._items:
                    return None
                path = self._items[0][0]
            try:
                raw = path.read_bytes()
                header, jpeg = raw.split(b"\n", 1)
                return path, json.loads(header), jpeg
            except FileNotFoundError:
                self.remove(path)  # dropped for room while we read it
            except ValueError:
                log.warning("corrupt escalation file discarded", extra={"path": str(path)})
                self.remove(path)

    def remove(self, path: Path) -> None:
        with self._lock:
            for i, (item, size) in enumerate(self._items):
                if item == path:
                    del self._items[i]
                    self._bytes -= size
                    break
        path.unlink(missing_ok=True)


class EscalationClient:
    """Decides, queues and uploads escalations; ``offer`` is the only call on the inference path."""

    def __init__(
        self,
        settings: EscalationSettings,
        *,
        server_url: str,
        device_id: str,
        secret: str,
        queue_dir: Path,
        ca_file: Path | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.counters = EscalationCounters()
        self.queue = DiskQueue(queue_dir, settings.queue_max_bytes)
        self._url = server_url.rstrip("/") + ENDPOINT
        token = base64.b64encode(f"{device_id}:{secret}".encode()).decode("ascii")
        self._auth = f"Basic {token}"
        self._device_id = device_id
        self._context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
        self._frames = TokenBucket(settings.max_frames_per_s, settings.burst, clock=clock)
        self._bandwidth = TokenBucket(settings.bandwidth_bytes_per_s, settings.bandwidth_bytes_per_s, clock=clock)
        self._override = settings.threshold
        self._privacy: str | None = None
        self._handoff: deque[tuple[Frame, Result, float, float]] = deque()
        self._sampler = random.Random()  # noqa: S311 - sampling frames, not a secret
        self._cond = threading.Condition()
        self._answers_lock = threading.Lock()
        self._answered: deque[int] = deque(maxlen=ANSWERS_REMEMBERED)
        self._stopped = False
        self._woken = False
        self._threads: list[threading.Thread] = []

    # -- the inference side --------------------------------------------------

    def set_threshold(self, threshold: float | None) -> None:
        """Apply the desired state's override; None returns to the manifest's default."""
        if threshold is not None and not 0.0 <= threshold <= 1.0:
            raise ValueError(f"escalation threshold {threshold} is outside [0, 1]")
        self._override = threshold

    def set_privacy(self, privacy: str | None) -> None:
        """Apply the site's policy from the desired state; None returns to the agent's configured one."""
        if privacy is not None and privacy not in PRIVACY:
            raise ValueError(f"escalation privacy {privacy!r} is not one of {', '.join(PRIVACY)}")
        self._privacy = privacy

    def set_budget(self, frames_per_s: float | None, bandwidth_bytes_per_s: float | None) -> None:
        """Apply the desired state's per-device budget; None returns each to the agent's config."""
        with self._cond:
            self._frames.rate = frames_per_s or self.settings.max_frames_per_s
            self._bandwidth.rate = bandwidth_bytes_per_s or self.settings.bandwidth_bytes_per_s
            self._bandwidth.capacity = self._bandwidth.rate

    @property
    def privacy(self) -> str:
        return self._privacy or self.settings.privacy

    def threshold(self, model_default: float) -> float:
        return self._override if self._override is not None else model_default

    def offer(self, frame: Frame, result: Result, model_default: float) -> bool:
        """Escalate ``frame`` if ``result`` is not confident enough, or as a fallback sample; True when taken.

        Below the threshold a frame is escalated (rate permitting) with
        ``sample_rate`` 1. At or above it, a ``fallback_share`` of frames is
        escalated too, with that ``sample_rate``: the cloud path stays in use,
        its agreement on confident frames is measured, and the threshold
        advisor sees what raising the threshold would send. Never blocks and
        never touches the disk: the frame is handed to the writer thread.
        """
        if not self.settings.enabled:
            return False
        share = 1.0
        if result.confidence >= self.threshold(model_default):
            share = self.settings.fallback_share
            if share <= 0 or self._sampler.random() >= share:
                return False
        with self._cond:
            if share < 1.0:
                self.counters.fallback += 1
            self.counters.offered += 1
            if not self._frames.try_take():
                self.counters.rate_limited += 1
                return False
            if len(self._handoff) >= self.settings.handoff_size:
                self._handoff.popleft()
                self.counters.dropped += 1
            self._handoff.append((frame, result, self.threshold(model_default), share))
            self._cond.notify_all()
        return True

    # -- the cloud's answers --------------------------------------------------

    def record_answer(self, args: dict[str, Any]) -> dict[str, Any]:
        """Keep the cloud's answer to an escalated frame beside the device's own decision; returns its summary.

        One JSON line in ``answers.jsonl`` next to the queue (moved to
        ``answers.jsonl.1`` past ``ANSWERS_MAX_BYTES``, so two files at most).
        A malformed answer raises ValueError and records nothing.
        """
        answer = protocol.EscalationAnswer.model_validate(args)
        agrees = answer.edge_label is not None and answer.edge_label == answer.label
        with self._answers_lock:
            # QoS 1 may deliver a command twice: an answer already kept is not kept again.
            if answer.escalation in self._answered:
                return {"frame": answer.frame, "escalation": answer.escalation, "duplicate": True}
            self._answered.append(answer.escalation)
        line = answer.model_dump_json() + "\n"
        path = self.queue.directory / ANSWERS
        with self._answers_lock:
            if path.exists() and path.stat().st_size + len(line) > ANSWERS_MAX_BYTES:
                os.replace(path, path.with_name(ANSWERS + ".1"))
            with path.open("a", encoding="utf-8") as journal:
                journal.write(line)
        with self._cond:
            self.counters.answered += 1
            self.counters.agreed += int(agrees)
        return {
            "frame": answer.frame,
            "escalation": answer.escalation,
            "edge_label": answer.edge_label,
            "cloud_label": answer.label,
            "cloud_confidence": answer.confidence,
            "agrees": agrees,
        }

    # -- threads -------------------------------------------------------------

    def start(self) -> None:
        for name, target in (("escalation-writer", self._write_loop), ("escalation-upload", self._upload_loop)):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout: float | None = 5.0) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(timeout)

    def wait_for(self, predicate: Callable[[EscalationCounters], bool], timeout: float | None = None) -> bool:
        """Wait until ``predicate(counters)`` holds (tests, the CLI's drain); False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: predicate(self.counters), timeout)

    def _write_loop(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._handoff or self._stopped)
                if not self._handoff:
                    return
                frame, result, threshold, share = self._handoff.popleft()
            try:
                self._write(frame, result, threshold, share)
            except (OSError, ValueError, cv2.error):
                log.exception("escalated frame not queued", extra={"frame": frame.name})
                with self._cond:
                    self.counters.dropped += 1
                    self._cond.notify_all()

    def _write(self, frame: Frame, result: Result, threshold: float, sample_rate: float = 1.0) -> None:
        privacy = self.privacy
        image: np.ndarray | None = frame.image
        crop = crop_box(result, frame.image.shape[:2]) if privacy == "crop" else None
        if privacy == "metadata" or (privacy == "crop" and crop is None):
            image = None  # no pixels leave the site (a classifier's frame has no detection to crop around)
        elif crop is not None:
            x, y, w, h = crop
            image = frame.image[y : y + h, x : x + w]
        else:
            longest = max(frame.image.shape[:2])
            if self.settings.max_side and longest > self.settings.max_side:
                ratio = self.settings.max_side / longest
                size = (max(1, round(frame.image.shape[1] * ratio)), max(1, round(frame.image.shape[0] * ratio)))
                image = np.asarray(cv2.resize(frame.image, size, interpolation=cv2.INTER_AREA), dtype=np.uint8)
        jpeg = b""
        if image is not None:
            ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, self.settings.jpeg_quality])
            if not ok:
                raise ValueError("JPEG encoding failed")
            jpeg = encoded.tobytes()
        metadata: dict[str, Any] = {
            "device_id": self._device_id,
            "ts": datetime.fromtimestamp(frame.ts, timezone.utc).isoformat(),
            "model_name": result.model_name,
            "model_version": result.model_version,
            "threshold": threshold,
            "frame": frame_id(frame),
            # Why it was sent: unsure (below the threshold, all of them) or a fallback sample of confident frames.
            "reason": "unsure" if sample_rate >= 1.0 else "fallback",
            "sample_rate": sample_rate,
            "result": result.to_json(),
        }
        if crop is not None:
            metadata["crop"] = list(crop)
        dropped = self.queue.put(metadata, jpeg)
        with self._cond:
            if dropped < 0:
                self.counters.dropped += 1
                log.warning(
                    "escalated frame dropped", extra={"frame": frame.name, "reason": "larger than the whole queue"}
                )
            else:
                self.counters.queued += 1
                self.counters.dropped += dropped
            self._cond.notify_all()

    def _sleep(self, seconds: float) -> bool:
        """Wait out a backoff or the bandwidth budget (a ``wake`` ends it early); True when stopped meanwhile."""
        with self._cond:
            self._cond.wait_for(lambda: self._stopped or self._woken, seconds)
            self._woken = False
            return self._stopped

    def wake(self) -> None:
        """The link is back: retry the queued frames now rather than at the end of a long backoff."""
        with self._cond:
            self._woken = True
            self._cond.notify_all()

    def has_backlog(self) -> bool:
        """Frames wait to go up: the runtime holds the telemetry backlog behind them after a reconnect."""
        return len(self.queue) > 0

    def _upload_loop(self) -> None:
        failures = 0
        while True:
            with self._cond:
                # The writer notifies after each frame it queues.
                self._cond.wait_for(lambda: self._stopped or len(self.queue) > 0)
                if self._stopped:
                    return
            item = self.queue.peek()
            if item is None:
                continue
            path, metadata, jpeg = item
            delay = self._bandwidth.wait_time()
            if delay and self._sleep(delay):
                return
            body, content_type = _multipart(metadata, jpeg)
            self._bandwidth.take(len(body))
            status, reason = self._post(body, content_type)
            with self._cond:
                if status is not None and 200 <= status < 300:
                    failures = 0
                    self.counters.uploaded += 1
                    self.counters.bytes_sent += len(body)
                    self.queue.remove(path)
                elif status in PERMANENT_STATUSES:
                    failures = 0
                    self.counters.rejected += 1
                    self.queue.remove(path)
                    log.warning(
                        "escalated frame refused",
                        extra={"frame": metadata.get("frame"), "status": status, "reason": reason},
                    )
                else:
                    failures += 1
                    self.counters.failed_attempts += 1
                self._cond.notify_all()
            if failures:
                delay = min(self.settings.backoff_max_s, self.settings.backoff_s * 2 ** (failures - 1))
                log.info("escalation upload failed, retrying", extra={"reason": reason, "retry_in_s": round(delay, 1)})
                if self._sleep(delay):
                    return

    def _post(self, body: bytes, content_type: str) -> tuple[int | None, str]:
        request = urllib.request.Request(  # noqa: S310 - the server URL is checked to be http(s) by the config
            self._url,
            data=body,
            method="POST",
            headers={"Content-Type": content_type, "Authorization": self._auth, "Content-Length": str(len(body))},
        )
        try:
            with urllib.request.urlopen(  # noqa: S310
                request, timeout=self.settings.timeout_s, context=self._context
            ) as response:
                response.read()
                return int(response.status), "ok"
        except urllib.error.HTTPError as exc:
            return exc.code, exc.reason if isinstance(exc.reason, str) else ""
        except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as exc:
            return None, str(exc)[:200]


PRIVACY = ("full", "crop", "metadata")
# A crop is the escalated detection's box enlarged by this factor (as the line camera cuts part crops), in the frame.
CROP_MARGIN = 1.3


def crop_box(result: Result, shape: tuple[int, ...]) -> tuple[int, int, int, int] | None:
    """[x, y, w, h] around the least sure detection (the one the frame was escalated for), enlarged and kept
    inside the frame; None without a detection."""
    if not result.detections:
        return None
    best = min(result.detections, key=lambda d: d.score)
    x1, y1, x2, y2 = best.box
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    half_w, half_h = (x2 - x1) * CROP_MARGIN / 2, (y2 - y1) * CROP_MARGIN / 2
    height, width = int(shape[0]), int(shape[1])
    left, top = max(0, int(cx - half_w)), max(0, int(cy - half_h))
    right, bottom = min(width, round(cx + half_w)), min(height, round(cy + half_h))
    if right - left < 1 or bottom - top < 1:
        return None
    return left, top, right - left, bottom - top


def frame_id(frame: Frame) -> str:
    """The id an escalated frame goes by: its source's name and capture time (ms), unique per capture.

    A looping folder or a camera that names its frames by number repeats names;
    the control plane keeps one escalation per (device, id), so the capture time
    makes each capture its own.
    """
    return f"{frame.name[:160]}@{int(frame.ts * 1000)}"


def _multipart(metadata: dict[str, Any], jpeg: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    name = str(metadata.get("frame") or "frame").replace('"', "").replace("\r", "").replace("\n", "")[:100]
    parts = [
        f"--{boundary}\r\n"
        'Content-Disposition: form-data; name="metadata"\r\n'
        "Content-Type: application/json\r\n\r\n".encode()
        + json.dumps(metadata).encode()
        + b"\r\n",
    ]
    if jpeg:  # a frame without pixels (a metadata-only site) goes as metadata alone
        parts.append(
            f"--{boundary}\r\n"
            f'Content-Disposition: form-data; name="frame"; filename="{name}.jpg"\r\n'
            "Content-Type: image/jpeg\r\n\r\n".encode()
            + jpeg
            + b"\r\n"
        )
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"

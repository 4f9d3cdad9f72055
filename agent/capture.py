"""Frames in: video files, image folders, cameras and streams, through a drop-oldest queue.

Capture runs on its own thread and never waits on inference. Between the two
sits a small bounded ``FrameQueue``: when inference falls behind, the oldest
queued frame is dropped and counted, because a live camera wants the newest
frame, not a growing backlog of stale ones. Offline runs (a benchmark, a
folder processed once) can ask for a lossless queue instead, where capture
waits for room.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np
import numpy.typing as npt

log = logging.getLogger(__name__)

Image = npt.NDArray[np.uint8]
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".pgm", ".ppm"})
STREAM_SCHEMES = ("rtsp://", "rtsps://", "http://", "https://", "rtmp://", "udp://", "tcp://")


def _u8(image: Any) -> Image:
    # OpenCV's colour reads are already uint8; this only narrows the type (no copy).
    return np.asarray(image, dtype=np.uint8)


class CaptureError(RuntimeError):
    """A source that cannot be opened or read."""


@dataclass(frozen=True)
class Frame:
    """One captured frame: BGR ``uint8`` pixels as OpenCV reads them."""

    image: Image
    index: int
    ts: float
    """Wall-clock capture time (``time.time()``)."""
    name: str = ""
    """Where it came from: an image's file name, or the source with the frame number."""


class FrameSource(Protocol):
    name: str
    live: bool
    """A live source (camera, stream) produces frames whether we read them or not."""

    def read(self) -> tuple[Image, str] | None:
        """The next frame and its name, or None at the end of the source."""

    def close(self) -> None: ...


class ImageFolderSource:
    """The images of a folder in name order; unreadable files are skipped and counted."""

    live = False

    def __init__(self, folder: Path, *, loop: bool = False) -> None:
        self.folder = folder
        self.name = str(folder)
        self.loop = loop
        self.unreadable = 0
        self._paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not self._paths:
            raise CaptureError(f"{folder}: no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        self._next = 0

    def read(self) -> tuple[Image, str] | None:
        # A folder of nothing but unreadable files must end rather than spin.
        misses = 0
        while misses < len(self._paths):
            if self._next >= len(self._paths):
                if not self.loop:
                    return None
                self._next = 0
            path = self._paths[self._next]
            self._next += 1
            image = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if image is not None:
                return _u8(image), path.name
            misses += 1
            self.unreadable += 1
            log.warning("unreadable image skipped", extra={"path": str(path)})
        return None

    def close(self) -> None:
        pass


class VideoSource:
    """A video file, a camera index or a stream URL, through ``cv2.VideoCapture``."""

    def __init__(self, target: str | int, *, loop: bool = False) -> None:
        self.name = str(target)
        self.live = isinstance(target, int) or str(target).lower().startswith(STREAM_SCHEMES)
        self.loop = loop and not self.live
        self._target = target
        self._capture = cv2.VideoCapture(target)
        if not self._capture.isOpened():
            raise CaptureError(f"cannot open video source {self.name!r}")
        self._count = 0

    def read(self) -> tuple[Image, str] | None:
        ok, image = self._capture.read()
        if not ok and self.loop and self._count > 0:
            self._capture.set(cv2.CAP_PROP_POS_FRAMES, 0)
            ok, image = self._capture.read()
        if not ok or image is None:
            return None
        self._count += 1
        return _u8(image), f"{self.name}#{self._count}"

    def reopen(self) -> None:
        """Open the camera or stream again after it failed (raises CaptureError while it is away)."""
        self._capture.release()
        self._capture = cv2.VideoCapture(self._target)
        if not self._capture.isOpened():
            raise CaptureError(f"cannot reopen video source {self.name!r}")

    def close(self) -> None:
        self._capture.release()


def open_source(spec: str, *, loop: bool = False) -> FrameSource:
    """Open a source named the way the config names it; raises CaptureError."""
    if spec.isdigit():
        return VideoSource(int(spec))
    if spec.lower().startswith(STREAM_SCHEMES):
        return VideoSource(spec)
    path = Path(spec)
    if path.is_dir():
        return ImageFolderSource(path, loop=loop)
    if path.is_file():
        if path.suffix.lower() in IMAGE_SUFFIXES:
            return ImageFolderSource(path.parent, loop=loop) if loop else _SingleImage(path)
        return VideoSource(str(path), loop=loop)
    raise CaptureError(f"{spec!r} is not a camera index, a stream URL, a file or a folder")


class _SingleImage:
    live = False

    def __init__(self, path: Path) -> None:
        self.name = str(path)
        self._path: Path | None = path

    def read(self) -> tuple[Image, str] | None:
        if self._path is None:
            return None
        path, self._path = self._path, None
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            raise CaptureError(f"{path}: not a readable image")
        return _u8(image), path.name

    def close(self) -> None:
        pass


class Closed(Exception):
    """The queue was closed and holds nothing more."""


class FrameQueue:
    """A bounded queue between capture and inference that drops its oldest frame when full.

    ``lossless=True`` makes ``put`` wait for room instead (offline runs that
    must see every frame). ``get`` blocks until a frame arrives or the queue
    is closed and empty.
    """

    def __init__(self, maxsize: int = 2, *, lossless: bool = False) -> None:
        if maxsize < 1:
            raise ValueError("maxsize must be >= 1")
        self.maxsize = maxsize
        self.lossless = lossless
        self.dropped = 0
        self._items: deque[Frame] = deque()
        self._cond = threading.Condition()
        self._closed = False

    def put(self, frame: Frame) -> None:
        with self._cond:
            if self._closed:
                raise Closed
            if self.lossless:
                self._cond.wait_for(lambda: len(self._items) < self.maxsize or self._closed)
                if self._closed:
                    raise Closed
            elif len(self._items) >= self.maxsize:
                self._items.popleft()
                self.dropped += 1
            self._items.append(frame)
            self._cond.notify_all()

    def get(self, timeout: float | None = None) -> Frame | None:
        """The oldest queued frame; None on timeout. Raises Closed once closed and drained."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._items or self._closed, timeout):
                return None
            if not self._items:
                raise Closed
            frame = self._items.popleft()
            self._cond.notify_all()
            return frame

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)


class Capture:
    """Reads a source on its own thread into a ``FrameQueue``, with a frame-rate cap and sampling.

    ``every_nth`` keeps one frame in N; ``max_fps`` keeps at most that many
    frames per second. A file source is paced by waiting; a live source is
    read continuously and the frames over the cap are discarded, so the
    camera's own buffer never fills with stale frames.
    """

    def __init__(
        self,
        source: FrameSource,
        queue: FrameQueue,
        *,
        max_fps: float | None = None,
        every_nth: int = 1,
        clock: Any = time.monotonic,
        reconnect_s: float = 0.5,
        reconnect_max_s: float = 30.0,
    ) -> None:
        if every_nth < 1:
            raise ValueError("every_nth must be >= 1")
        if max_fps is not None and max_fps <= 0:
            raise ValueError("max_fps must be > 0")
        self.source = source
        self.queue = queue
        self.max_fps = max_fps
        self.every_nth = every_nth
        self.read_frames = 0
        self.captured = 0
        self.skipped = 0
        self.errors = 0
        self.reconnects = 0
        self.reconnects_in_a_row = 0
        self.reconnect_s = reconnect_s
        self.reconnect_max_s = reconnect_max_s
        self.finished = threading.Event()
        self._clock = clock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="capture", daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = 5.0) -> None:
        self._stop.set()
        self.queue.close()
        if self._thread is not None:
            self._thread.join(timeout)

    def frames(self) -> Iterator[Frame]:
        """The frames this capture keeps, in order, on the caller's thread (no queue)."""
        interval = 1.0 / self.max_fps if self.max_fps else 0.0
        next_due = self._clock()
        index = 0
        while not self._stop.is_set():
            try:
                item = self.source.read()
            except (CaptureError, OSError, cv2.error) as exc:
                self.errors += 1
                if not self.source.live:
                    log.error("capture failed", extra={"source": self.source.name, "error": str(exc)})
                    return
                item = None
            if item is None:
                # A file ends; a camera or a stream that stops is expected back (a cable, a
                # rebooting camera, an RTSP server restart): reopen it with backoff, forever.
                if not self.source.live or not self._reconnect():
                    return
                continue
            self.reconnects_in_a_row = 0
            image, name = item
            self.read_frames += 1
            if (self.read_frames - 1) % self.every_nth:
                self.skipped += 1
                continue
            if interval:
                now = self._clock()
                if now < next_due:
                    if self.source.live:
                        self.skipped += 1
                        continue
                    # Pacing a file to the cap; the stop event ends the wait early.
                    if self._stop.wait(next_due - now):
                        return
                    now = next_due
                next_due = max(next_due + interval, now)
            index += 1
            self.captured += 1
            yield Frame(image=image, index=index, ts=time.time(), name=name)

    def _reconnect(self) -> bool:
        """Wait out the backoff and reopen a live source; False when stopped meanwhile."""
        if self._stop.is_set():
            return False
        delay = min(self.reconnect_max_s, self.reconnect_s * 2**self.reconnects_in_a_row)
        self.reconnects_in_a_row += 1
        self.reconnects += 1
        log.warning(
            "source stopped delivering, reopening", extra={"source": self.source.name, "retry_in_s": round(delay, 1)}
        )
        if self._stop.wait(delay):
            return False
        reopen = getattr(self.source, "reopen", None)
        if reopen is not None:
            try:
                reopen()
            except CaptureError as exc:
                log.info("source not reopened yet", extra={"source": self.source.name, "error": str(exc)})
        return True

    def _run(self) -> None:
        try:
            for frame in self.frames():
                self.queue.put(frame)
        except Closed:
            pass
        finally:
            self.source.close()
            self.queue.close()
            self.finished.set()

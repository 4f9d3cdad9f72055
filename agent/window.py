"""Windowed summaries of inference: the ``data`` of a telemetry record of kind ``window``.

One summary per telemetry interval instead of one record per frame: the
outbox and the link carry a few hundred bytes a minute whatever the frame
rate. Latency and confidence go into the shared histograms of
``agent.kernel.histogram`` so the control plane can merge windows and read
percentiles off the sum.
"""

from __future__ import annotations

import threading
from datetime import datetime, timezone
from typing import Any

from agent.kernel import histogram, protocol
from agent.kernel.decode import Result

MAX_CLASSES = 1000  # protocol.Window's bound; rarer classes fold into OTHER
OTHER = "_other"


def _now() -> datetime:
    return datetime.now(timezone.utc)


class WindowAggregator:
    """Adds up one window of results; ``close()`` returns it and opens the next.

    Called from the inference thread (``add``) and the run loop (``close``),
    hence the lock; ``add`` is a handful of dict updates, far below a frame's cost.
    """

    def __init__(self, *, model_name: str | None = None, model_version: str | None = None) -> None:
        self._lock = threading.Lock()
        self._model_name = model_name
        self._model_version = model_version
        self._fallback = False
        self._reset(_now())

    def _reset(self, start: datetime) -> None:
        self._start = start
        self._frames = 0
        self._dropped = 0
        self._errors = 0
        self._escalations = 0
        self._latency = histogram.LatencyHistogram()
        self._confidence = [0] * histogram.CONFIDENCE_BINS
        self._classes: dict[str, int] = {}

    def add(self, result: Result, *, fallback: bool = False) -> None:
        with self._lock:
            self._frames += 1
            self._latency.add(result.latency_ms)
            self._confidence[histogram.confidence_bin(result.confidence)] += 1
            for label in result.labels():
                if label not in self._classes and len(self._classes) >= MAX_CLASSES - 1:
                    label = OTHER
                self._classes[label] = self._classes.get(label, 0) + 1
            if result.model_name is not None:
                self._model_name = result.model_name
                self._model_version = result.model_version
            self._fallback = fallback

    def add_dropped(self, count: int = 1) -> None:
        with self._lock:
            self._dropped += count

    def add_error(self, count: int = 1) -> None:
        with self._lock:
            self._errors += count

    def add_escalation(self, count: int = 1) -> None:
        with self._lock:
            self._escalations += count

    def close(self, end: datetime | None = None) -> dict[str, Any]:
        """The closed window as ``protocol.Window`` JSON data; the next window starts at ``end``."""
        end = end or _now()
        with self._lock:
            window = protocol.Window(
                start=self._start,
                end=max(end, self._start),
                model_name=self._model_name,
                model_version=self._model_version,
                fallback=self._fallback,
                frames=self._frames,
                dropped_frames=self._dropped,
                errors=self._errors,
                escalations=self._escalations,
                latency_ms=self._latency.to_wire(),
                confidence=list(self._confidence),
                classes=dict(self._classes),
            )
            self._reset(window.end)
        return window.model_dump(mode="json", exclude_none=True)

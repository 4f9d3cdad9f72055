"""Windowed summaries of inference: the ``data`` of a telemetry record of kind ``window``.

One summary per telemetry interval instead of one record per frame: the
outbox and the link carry a few hundred bytes a minute whatever the frame
rate. Latency and confidence go into the shared histograms of
``agent.kernel.histogram`` so the control plane can merge windows and read
percentiles off the sum.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
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
        self._shadow: _Shadow | None = None

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

    def add_shadow(self, result: Result | None, *, compared: int = 0, agreed: int = 0) -> None:
        """One frame the shadow candidate decided (``result``), or failed on (None)."""
        with self._lock:
            if self._shadow is None:
                self._shadow = _Shadow()
            self._shadow.add(result, compared, agreed)

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
                shadow=self._shadow_summary(),
            )
            self._reset(window.end)
        return window.model_dump(mode="json", exclude_none=True)

    def _shadow_summary(self) -> protocol.ShadowSummary | None:
        return None if self._shadow is None else self._shadow.summary()


@dataclass
class _Shadow:
    """One window's figures of the shadow candidate."""

    frames: int = 0
    errors: int = 0
    compared: int = 0
    agreed: int = 0
    latency: histogram.LatencyHistogram = field(default_factory=histogram.LatencyHistogram)
    confidence: list[int] = field(default_factory=lambda: [0] * histogram.CONFIDENCE_BINS)
    model_name: str | None = None
    model_version: str | None = None

    def add(self, result: Result | None, compared: int, agreed: int) -> None:
        if result is None:
            self.errors += 1
            return
        self.frames += 1
        self.compared += compared
        self.agreed += agreed
        self.latency.add(result.latency_ms)
        self.confidence[histogram.confidence_bin(result.confidence)] += 1
        if result.model_name is not None:
            self.model_name, self.model_version = result.model_name, result.model_version

    def summary(self) -> protocol.ShadowSummary:
        return protocol.ShadowSummary(
            model_name=self.model_name,
            model_version=self.model_version,
            frames=self.frames,
            errors=self.errors,
            compared=self.compared,
            agreed=self.agreed,
            latency_ms=self.latency.to_wire(),
            confidence=list(self.confidence),
        )

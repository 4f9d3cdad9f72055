"""Figures read off merged telemetry: percentiles, rates, distributions.

Everything here adds counts first and derives figures last, so the p95 of a
site is read from the site's merged latency histogram, never averaged from
its devices' p95s. Django-free.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from agent.kernel import histogram
from agent.kernel.protocol import Window

_BIN_WIDTH = 1.0 / histogram.CONFIDENCE_BINS
_COUNTS = (
    "windows",
    "fallback_windows",
    "frames",
    "dropped_frames",
    "errors",
    "escalations",
    "shadow_frames",
    "shadow_errors",
    "shadow_compared",
    "shadow_agreed",
)


@dataclass
class Summary:
    """Additive totals of any set of windows or rollup rows."""

    windows: int = 0
    fallback_windows: int = 0
    frames: int = 0
    dropped_frames: int = 0
    errors: int = 0
    escalations: int = 0
    latency: histogram.LatencyHistogram = field(default_factory=histogram.LatencyHistogram)
    confidence: list[int] = field(default_factory=lambda: [0] * histogram.CONFIDENCE_BINS)
    classes: Counter[str] = field(default_factory=Counter)
    # A candidate run in shadow on the same frames (``Window.shadow``): agreement slots and its latency.
    shadow_frames: int = 0
    shadow_errors: int = 0
    shadow_compared: int = 0
    shadow_agreed: int = 0
    shadow_latency: histogram.LatencyHistogram = field(default_factory=histogram.LatencyHistogram)

    def add_window(self, window: Window) -> None:
        self.windows += 1
        self.fallback_windows += int(window.fallback)
        self.frames += window.frames
        self.dropped_frames += window.dropped_frames
        self.errors += window.errors
        self.escalations += window.escalations
        self.latency.merge(window.latency())
        self._add_confidence(window.confidence)
        self.classes.update(window.classes)
        shadow = window.shadow
        if shadow is not None:
            self.shadow_frames += shadow.frames
            self.shadow_errors += shadow.errors
            self.shadow_compared += shadow.compared
            self.shadow_agreed += shadow.agreed
            self.shadow_latency.merge(histogram.LatencyHistogram.from_wire(shadow.latency_ms))

    def add_totals(self, row: Any) -> None:
        """Add a rollup row (anything with the rollup's fields).

        All or nothing: the row's parts are read before any is added, so a row
        that cannot be read (raising) leaves the summary as it was.
        """
        latency = histogram.LatencyHistogram.from_wire(row.latency)
        shadow_latency = histogram.LatencyHistogram.from_wire(row.shadow_latency or {})
        confidence = [int(c) for c in row.confidence[: histogram.CONFIDENCE_BINS]]
        classes = Counter({str(k): int(v) for k, v in dict(row.classes).items()})
        counts = [int(getattr(row, name)) for name in _COUNTS]
        for name, count in zip(_COUNTS, counts, strict=True):
            setattr(self, name, getattr(self, name) + count)
        self.latency.merge(latency)
        self.shadow_latency.merge(shadow_latency)
        self._add_confidence(confidence)
        self.classes.update(classes)

    def merge(self, other: Summary) -> Summary:
        return self.add(other)

    def add(self, other: Summary, sign: int = 1) -> Summary:
        """Add (``sign`` 1) or take away (-1) another summary's counts.

        Taking away is how a rollup row follows a changed source: the new
        source is added and the old one taken away, so counts can pass through
        negative values in a difference, never in a stored row.
        """
        for name in _COUNTS:
            setattr(self, name, getattr(self, name) + sign * getattr(other, name))
        for mine, theirs in ((self.latency, other.latency), (self.shadow_latency, other.shadow_latency)):
            for index, count in theirs.counts.items():
                mine.counts[index] = mine.counts.get(index, 0) + sign * count
        for i, count in enumerate(other.confidence[: histogram.CONFIDENCE_BINS]):
            self.confidence[i] += sign * count
        for name, count in other.classes.items():
            self.classes[name] += sign * count
        return self

    def has_negative(self) -> bool:
        """Whether any count is below zero: a difference can be, a total of real windows cannot."""
        counts = [getattr(self, name) for name in _COUNTS]
        counts += [*self.latency.counts.values(), *self.shadow_latency.counts.values()]
        counts += [*self.confidence, *self.classes.values()]
        return any(count < 0 for count in counts)

    def _add_confidence(self, bins: list[int]) -> None:
        for i, count in enumerate(bins[: histogram.CONFIDENCE_BINS]):
            self.confidence[i] += count

    # --- derived figures ----------------------------------------------------

    def percentile(self, q: float) -> float | None:
        return self.latency.quantile(q)

    @property
    def mean_confidence(self) -> float | None:
        """Mean read at bin centres: within half a bin (0.025) of the exact mean."""
        total = sum(self.confidence)
        if total == 0:
            return None
        return sum((i + 0.5) * _BIN_WIDTH * c for i, c in enumerate(self.confidence)) / total

    @property
    def escalation_rate(self) -> float | None:
        return self.escalations / self.frames if self.frames else None

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.frames if self.frames else None

    @property
    def dropped_rate(self) -> float | None:
        offered = self.frames + self.dropped_frames
        return self.dropped_frames / offered if offered else None

    @property
    def shadow_agreement(self) -> float | None:
        """The share of agreement slots where the shadow candidate agreed with the model in service."""
        return self.shadow_agreed / self.shadow_compared if self.shadow_compared else None

    def class_mix(self) -> dict[str, float]:
        total = sum(self.classes.values())
        return {name: count / total for name, count in self.classes.most_common()} if total else {}

    def confidence_distribution(self) -> list[float]:
        total = sum(self.confidence)
        return [c / total for c in self.confidence] if total else [0.0] * histogram.CONFIDENCE_BINS

    def figures(self) -> dict[str, float | int | None]:
        """The flat figures a chart point or a report carries."""
        return {
            "windows": self.windows,
            "frames": self.frames,
            "dropped_frames": self.dropped_frames,
            "errors": self.errors,
            "escalations": self.escalations,
            "latency_p50_ms": self.percentile(0.5),
            "latency_p95_ms": self.percentile(0.95),
            "latency_p99_ms": self.percentile(0.99),
            "mean_confidence": self.mean_confidence,
            "escalation_rate": self.escalation_rate,
            "error_rate": self.error_rate,
            "dropped_rate": self.dropped_rate,
            "fallback_windows": self.fallback_windows,
            "shadow_frames": self.shadow_frames,
            "shadow_agreement": self.shadow_agreement,
            "shadow_latency_p95_ms": self.shadow_latency.quantile(0.95),
        }

    def totals(self) -> dict[str, Any]:
        """The stored (additive) form of a rollup row."""
        return {
            "windows": self.windows,
            "fallback_windows": self.fallback_windows,
            "frames": self.frames,
            "dropped_frames": self.dropped_frames,
            "errors": self.errors,
            "escalations": self.escalations,
            "latency": self.latency.to_wire(),
            "confidence": list(self.confidence),
            "classes": dict(self.classes),
            "shadow_frames": self.shadow_frames,
            "shadow_errors": self.shadow_errors,
            "shadow_compared": self.shadow_compared,
            "shadow_agreed": self.shadow_agreed,
            "shadow_latency": self.shadow_latency.to_wire(),
        }

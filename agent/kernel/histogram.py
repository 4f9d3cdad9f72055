"""Mergeable histograms for latency and confidence.

Percentiles cannot be averaged: the p95 of a site is not the mean of its
devices' p95s. Devices therefore send histograms with fixed, shared bucket
edges, the control plane adds the counts of any set of windows and devices,
and reads percentiles off the merged counts.

Latency buckets are log-spaced (each edge ``GROWTH`` times the previous), so
a percentile read from a bucket is within ``GROWTH - 1`` (5 %) of the true
value at any scale from 10 microseconds to about 10 minutes. Confidence uses
``CONFIDENCE_BINS`` equal bins on [0, 1]. Django-free.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

GROWTH = 1.05
MIN_MS = 0.01
MAX_INDEX = 480  # MIN_MS * GROWTH**480 is about 14 minutes
CONFIDENCE_BINS = 20
_LOG_GROWTH = math.log(GROWTH)


def bucket_of(value_ms: float) -> int:
    """Index of the latency bucket holding ``value_ms``; 0 also takes everything below MIN_MS."""
    if not value_ms > MIN_MS:  # also catches NaN
        return 0
    return min(MAX_INDEX, int(math.log(value_ms / MIN_MS) / _LOG_GROWTH))


def bucket_bounds(index: int) -> tuple[float, float]:
    """The [low, high) range of a latency bucket, in milliseconds."""
    low = 0.0 if index == 0 else MIN_MS * GROWTH**index
    return low, MIN_MS * GROWTH ** (index + 1)


@dataclass
class LatencyHistogram:
    """Sparse counts per log-spaced bucket; the wire form is ``{"index": count}``."""

    counts: dict[int, int] = field(default_factory=dict)

    def add(self, value_ms: float, count: int = 1) -> None:
        index = bucket_of(value_ms)
        self.counts[index] = self.counts.get(index, 0) + count

    def merge(self, other: LatencyHistogram) -> LatencyHistogram:
        for index, count in other.counts.items():
            self.counts[index] = self.counts.get(index, 0) + count
        return self

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def quantile(self, q: float) -> float | None:
        """The value below which a fraction ``q`` of the samples fall, or None when empty.

        Interpolates geometrically inside the bucket where the rank falls, which
        matches the log spacing of the edges.
        """
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"quantile {q} is outside [0, 1]")
        total = self.total
        if total == 0:
            return None
        rank = q * total
        seen = 0
        for index in sorted(self.counts):
            count = self.counts[index]
            if count <= 0:
                continue
            if seen + count >= rank:
                low, high = bucket_bounds(index)
                fraction = (rank - seen) / count
                if low == 0.0:
                    return high * fraction
                return float(low * (high / low) ** fraction)
            seen += count
        return bucket_bounds(max(self.counts))[1]

    def to_wire(self) -> dict[str, int]:
        return {str(index): count for index, count in sorted(self.counts.items()) if count}

    @classmethod
    def from_wire(cls, data: Mapping[str, int]) -> LatencyHistogram:
        counts: dict[int, int] = {}
        for key, count in data.items():
            index = int(key)
            if not 0 <= index <= MAX_INDEX or count < 0:
                raise ValueError(f"latency bucket {key!r}={count!r} is out of range")
            counts[index] = counts.get(index, 0) + int(count)
        return cls(counts)

    @classmethod
    def of(cls, values_ms: Iterable[float]) -> LatencyHistogram:
        histogram = cls()
        for value in values_ms:
            histogram.add(value)
        return histogram


def confidence_bin(confidence: float) -> int:
    """Bin of a confidence in [0, 1]; 1.0 falls into the last bin."""
    if not confidence > 0.0:
        return 0
    return min(CONFIDENCE_BINS - 1, int(confidence * CONFIDENCE_BINS))


def confidence_histogram(confidences: Iterable[float]) -> list[int]:
    counts = [0] * CONFIDENCE_BINS
    for confidence in confidences:
        counts[confidence_bin(confidence)] += 1
    return counts


def merge_counts(histograms: Iterable[list[int]]) -> list[int]:
    """Add dense histograms (confidence bins) element-wise."""
    merged = [0] * CONFIDENCE_BINS
    for histogram in histograms:
        for i, count in enumerate(histogram[:CONFIDENCE_BINS]):
            merged[i] += count
    return merged

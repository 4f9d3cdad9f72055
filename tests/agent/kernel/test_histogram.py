"""Percentiles read from merged histograms agree with numpy on the raw samples."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.kernel import histogram
from agent.kernel.histogram import LatencyHistogram

latencies = st.lists(st.floats(min_value=0.05, max_value=60_000, allow_nan=False), min_size=1, max_size=400)


def within_one_bucket(estimate: float, samples: list[float], q: float) -> bool:
    """The estimate lies in the bucket range spanned by numpy's neighbours of the rank."""
    ordered = np.sort(np.asarray(samples))
    low = float(np.quantile(ordered, q, method="lower"))
    high = float(np.quantile(ordered, q, method="higher"))
    return low / histogram.GROWTH <= estimate <= high * histogram.GROWTH


@settings(max_examples=150, deadline=None)
@given(parts=st.lists(latencies, min_size=1, max_size=6), q=st.sampled_from([0.5, 0.9, 0.95, 0.99]))
def test_percentiles_of_merged_device_histograms_match_numpy(parts: list[list[float]], q: float) -> None:
    merged = LatencyHistogram()
    for part in parts:
        # Each part goes over the wire, as a device's window does.
        merged.merge(LatencyHistogram.from_wire(LatencyHistogram.of(part).to_wire()))
    everything = [value for part in parts for value in part]
    estimate = merged.quantile(q)
    assert estimate is not None
    assert within_one_bucket(estimate, everything, q), (estimate, np.quantile(everything, q))


def test_averaging_percentiles_would_be_wrong_and_merging_is_not() -> None:
    fast = [1.0] * 990
    slow = [500.0] * 10
    merged = LatencyHistogram.of(fast).merge(LatencyHistogram.of(slow))
    p99 = merged.quantile(0.995)
    assert p99 is not None and p99 > 400  # the slow tail survives the merge
    assert merged.total == 1000


def test_an_empty_histogram_has_no_percentile() -> None:
    assert LatencyHistogram().quantile(0.5) is None


@pytest.mark.parametrize("wire", [{"-1": 3}, {"9999": 1}, {"3": -2}, {"x": 1}])
def test_bad_wire_histograms_are_refused(wire: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        LatencyHistogram.from_wire(wire)


def test_confidence_bins_cover_zero_to_one() -> None:
    counts = histogram.confidence_histogram([0.0, 0.049, 0.05, 0.5, 0.999, 1.0])
    assert len(counts) == histogram.CONFIDENCE_BINS
    assert counts[0] == 2 and counts[1] == 1 and counts[10] == 1 and counts[-1] == 2
    assert histogram.merge_counts([counts, counts]) == [2 * c for c in counts]

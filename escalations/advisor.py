"""The threshold advisor's arithmetic: what each escalation threshold would have cost and scored. numpy only.

Each record is one frame the edge model answered: its top-1 confidence and
label, the cloud model's answer, and the best label known for it (a
reviewer's when the frame was reviewed, else the cloud's). A threshold ``t``
escalates every frame whose confidence is below ``t``, as the agent does
(``agent.escalation``: ``confidence >= threshold`` keeps the edge answer), so
for each ``t``:

* ``escalation_rate``: the share of frames escalated;
* ``expected_accuracy``: the cloud's answer scored on escalated frames, the
  edge's on the rest, against the best known label;
* ``edge_accuracy_kept``: the edge's accuracy on the frames it keeps.

Where the truth is only the cloud's answer, the cloud is right by definition,
so ``expected_accuracy`` flatters high thresholds until reviewers have
labelled a fair share of frames; the figures are only as good as the labels.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

GRID_STEPS = 100
"""The default thresholds are 0.00, 0.01, ... 1.00."""
MAX_EXTRA_THRESHOLDS = 200
"""Distinct confidences are added to the grid when there are at most this many, so a small set gets exact steps."""


@dataclass(frozen=True)
class Record:
    """One frame: what the edge said, how sure it was, what the cloud said, and the best known truth."""

    confidence: float
    edge_label: str
    truth: str
    cloud_label: str


@dataclass(frozen=True)
class Point:
    """What one threshold would have done over the records."""

    threshold: float
    escalation_rate: float
    expected_accuracy: float
    edge_accuracy_kept: float | None
    """None when the threshold escalates every frame."""
    frames: int
    escalated: int


@dataclass(frozen=True)
class Recommendation:
    """The chosen point and which constraint chose it.

    ``binding`` is ``"budget"`` when the point is the most accurate one within
    the upload budget (only a budget was given, or the accuracy target cannot
    be met within it: then ``accuracy_met`` is False), and ``"accuracy"`` when
    it is the cheapest point that meets the accuracy target.
    """

    point: Point
    binding: Literal["budget", "accuracy"]
    accuracy_met: bool | None
    """None when no accuracy target was given."""
    reason: str


def default_thresholds(confidences: Iterable[float] = ()) -> list[float]:
    """0.00 to 1.00 by 0.01, plus the distinct confidences in ``confidences`` when there are few of them."""
    grid = {i / GRID_STEPS for i in range(GRID_STEPS + 1)}
    distinct = set(_checked_confidences(confidences).tolist())
    if len(distinct) <= MAX_EXTRA_THRESHOLDS:
        grid |= distinct
    return sorted(grid)


def curve(records: Sequence[Record], thresholds: Iterable[float] | None = None) -> list[Point]:
    """One point per threshold, lowest threshold first; no records, no points.

    Raises ValueError for a confidence or threshold that is not a finite number from 0 to 1.
    """
    confidences = _checked_confidences(r.confidence for r in records)
    chosen = default_thresholds(confidences.tolist()) if thresholds is None else _checked_thresholds(thresholds)
    frames = len(records)
    if frames == 0:
        return []
    order = np.argsort(confidences, kind="stable")
    ordered = confidences[order]
    edge_right = np.array([records[i].edge_label == records[i].truth for i in order], dtype=np.int64)
    cloud_right = np.array([records[i].cloud_label == records[i].truth for i in order], dtype=np.int64)
    # Prefix sums over frames sorted by confidence: escalating below t is escalating the first k of them.
    edge_prefix = np.concatenate([[0], np.cumsum(edge_right)])
    cloud_prefix = np.concatenate([[0], np.cumsum(cloud_right)])
    edge_total = int(edge_prefix[-1])
    points = []
    for threshold in chosen:
        escalated = int(np.searchsorted(ordered, threshold, side="left"))
        kept = frames - escalated
        edge_kept_right = edge_total - int(edge_prefix[escalated])
        correct = int(cloud_prefix[escalated]) + edge_kept_right
        points.append(
            Point(
                threshold=threshold,
                escalation_rate=escalated / frames,
                expected_accuracy=correct / frames,
                edge_accuracy_kept=edge_kept_right / kept if kept else None,
                frames=frames,
                escalated=escalated,
            )
        )
    return points


def recommend(
    points: Sequence[Point], *, max_escalation_rate: float | None = None, min_accuracy: float | None = None
) -> Recommendation | None:
    """The point to run at, or None when no point qualifies (or there are none).

    With a budget (``max_escalation_rate``): the most accurate point within
    it, the lower rate on a tie. With an accuracy target (``min_accuracy``):
    the lowest escalation rate that meets it. With both, the budget binds: the
    cheapest point within the budget that meets the target, or else the most
    accurate within the budget, marked as missing the target. Remaining ties
    go to the lower threshold.
    """
    if max_escalation_rate is None and min_accuracy is None:
        raise ValueError("give max_escalation_rate, min_accuracy or both")
    for name, value in (("max_escalation_rate", max_escalation_rate), ("min_accuracy", min_accuracy)):
        if value is not None and not (math.isfinite(value) and 0.0 <= value <= 1.0):
            raise ValueError(f"{name} must be a number from 0 to 1, got {value!r}")
    affordable = [p for p in points if max_escalation_rate is None or p.escalation_rate <= max_escalation_rate]
    if min_accuracy is not None:
        meeting = [p for p in affordable if p.expected_accuracy >= min_accuracy]
        if meeting:
            best = min(meeting, key=lambda p: (p.escalation_rate, p.threshold))
            return Recommendation(
                point=best,
                binding="accuracy",
                accuracy_met=True,
                reason=(
                    f"the lowest escalation rate ({best.escalation_rate:.1%}) whose expected accuracy "
                    f"({best.expected_accuracy:.1%}) meets the target of {min_accuracy:.1%}"
                ),
            )
        if max_escalation_rate is None:
            return None
    if not affordable:
        return None
    best = min(affordable, key=lambda p: (-p.expected_accuracy, p.escalation_rate, p.threshold))
    if min_accuracy is None:
        met: bool | None = None
        reason = f"the most accurate point ({best.expected_accuracy:.1%}) within the {max_escalation_rate:.1%} budget"
    else:
        met = False
        reason = (
            f"the {max_escalation_rate:.1%} budget binds: no point within it reaches {min_accuracy:.1%}; "
            f"the most accurate within it reaches {best.expected_accuracy:.1%}"
        )
    return Recommendation(point=best, binding="budget", accuracy_met=met, reason=reason)


def _checked_confidences(values: Iterable[float]) -> np.ndarray:
    array = np.asarray([float(v) for v in values], dtype=np.float64)
    bad = ~(np.isfinite(array) & (array >= 0.0) & (array <= 1.0))
    if bad.any():
        index = int(np.flatnonzero(bad)[0])
        raise ValueError(f"confidence {index} is {array[index]!r}: confidences are finite numbers from 0 to 1")
    return array


def _checked_thresholds(values: Iterable[float]) -> list[float]:
    checked = set()
    for value in values:
        number = float(value)
        if not (math.isfinite(number) and 0.0 <= number <= 1.0):
            raise ValueError(f"threshold {value!r}: thresholds are finite numbers from 0 to 1")
        checked.add(number)
    return sorted(checked)

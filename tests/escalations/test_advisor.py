"""The threshold advisor's arithmetic: checked against a curve worked out by hand, and strict about its inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest

from escalations.advisor import Point, Record, curve, default_thresholds, recommend

# Ten frames, most confident first: (confidence, edge answer, cloud answer, best known truth).
# The edge is right on frames 1, 2, 3, 4, 6 and 8 (6 of 10); the cloud on all but 3 and 10 (8 of 10).
FRAMES = [
    Record(0.95, "a", truth="a", cloud_label="a"),
    Record(0.90, "b", truth="b", cloud_label="b"),
    Record(0.85, "a", truth="a", cloud_label="b"),
    Record(0.80, "c", truth="c", cloud_label="c"),
    Record(0.70, "a", truth="b", cloud_label="b"),
    Record(0.65, "c", truth="c", cloud_label="c"),
    Record(0.55, "b", truth="a", cloud_label="a"),
    Record(0.50, "a", truth="a", cloud_label="a"),
    Record(0.40, "c", truth="b", cloud_label="b"),
    Record(0.30, "b", truth="a", cloud_label="c"),
]

# Worked by hand: (threshold, escalated, cloud right among the escalated, edge right among the kept).
BY_HAND = [
    (0.0, 0, 0, 6),  # nothing escalated: the edge alone
    (0.3, 0, 0, 6),  # 0.30 is not below 0.3: the agent escalates strictly below the threshold
    (0.45, 2, 1, 6),  # frames 9 and 10: the cloud is right on 9 only
    (0.6, 4, 3, 5),  # and 7, 8: the edge kept frames 1-6 and is right on 1, 2, 3, 4, 6
    (0.75, 6, 5, 4),  # and 5, 6
    (0.9, 8, 6, 2),  # and 3, 4: the cloud is wrong on 3, which the edge had right; 0.90 itself is kept
    (1.0, 10, 8, 0),  # everything: the cloud alone
]


def test_the_curve_of_ten_frames_is_the_one_worked_out_by_hand() -> None:
    points = curve(FRAMES, thresholds=[t for t, *_ in BY_HAND])

    expected = [
        Point(
            threshold=t,
            escalation_rate=escalated / 10,
            expected_accuracy=(cloud_right + edge_right) / 10,
            edge_accuracy_kept=edge_right / (10 - escalated) if escalated < 10 else None,
            frames=10,
            escalated=escalated,
        )
        for t, escalated, cloud_right, edge_right in BY_HAND
    ]
    assert points == expected
    assert [p.expected_accuracy for p in points] == [0.6, 0.6, 0.7, 0.8, 0.9, 0.8, 0.8]
    assert [p.edge_accuracy_kept for p in points] == [0.6, 0.6, 0.75, 5 / 6, 1.0, 1.0, None]


def test_the_curve_agrees_with_scoring_every_frame_one_by_one() -> None:
    rng = np.random.default_rng(7)
    labels = ["ok", "crack", "scratch"]
    records = [
        Record(
            float(np.float32(rng.random())),
            labels[rng.integers(3)],
            truth=labels[rng.integers(3)],
            cloud_label=labels[rng.integers(3)],
        )
        for _ in range(300)
    ]
    records += records[:20]  # repeated confidences

    for point in curve(records):
        escalated = [r for r in records if r.confidence < point.threshold]
        kept = [r for r in records if r.confidence >= point.threshold]
        right = sum(r.cloud_label == r.truth for r in escalated) + sum(r.edge_label == r.truth for r in kept)
        assert point.escalated == len(escalated)
        assert point.escalation_rate == len(escalated) / len(records)
        assert point.expected_accuracy == right / len(records)


def test_the_default_thresholds_are_a_grid_plus_the_confidences_of_a_small_set() -> None:
    points = curve(FRAMES)
    thresholds = [p.threshold for p in points]

    assert thresholds == sorted(set(thresholds))
    assert thresholds[0] == 0.0 and thresholds[-1] == 1.0
    assert {i / 100 for i in range(101)} <= set(thresholds)
    assert {r.confidence for r in FRAMES} <= set(thresholds)
    assert len(default_thresholds(np.linspace(0, 1, 1000).tolist())) == 101


def test_a_budget_picks_the_most_accurate_point_within_it() -> None:
    points = curve(FRAMES, thresholds=[t for t, *_ in BY_HAND])

    within_half = recommend(points, max_escalation_rate=0.5)
    within_most = recommend(points, max_escalation_rate=0.6)

    assert within_half is not None and within_half.point.threshold == 0.6
    assert within_half.binding == "budget" and within_half.accuracy_met is None
    assert within_most is not None and within_most.point.threshold == 0.75
    assert within_most.point.expected_accuracy == 0.9


def test_equally_accurate_points_go_to_the_lower_rate_then_the_lower_threshold() -> None:
    def point(threshold: float, rate: float, accuracy: float) -> Point:
        return Point(threshold, rate, accuracy, None, 100, round(rate * 100))

    points = [point(0.2, 0.05, 0.9), point(0.5, 0.08, 0.95), point(0.6, 0.10, 0.95), point(0.55, 0.08, 0.95)]

    chosen = recommend(points, max_escalation_rate=0.1)

    assert chosen is not None and chosen.point == point(0.5, 0.08, 0.95)


def test_an_accuracy_target_picks_the_lowest_rate_that_meets_it() -> None:
    points = curve(FRAMES, thresholds=[t for t, *_ in BY_HAND])

    chosen = recommend(points, min_accuracy=0.8)

    assert chosen is not None
    assert (chosen.point.threshold, chosen.point.escalation_rate) == (0.6, 0.4)
    assert chosen.binding == "accuracy" and chosen.accuracy_met is True


def test_with_both_the_budget_binds_and_says_so() -> None:
    points = curve(FRAMES, thresholds=[t for t, *_ in BY_HAND])

    met = recommend(points, max_escalation_rate=0.5, min_accuracy=0.7)
    missed = recommend(points, max_escalation_rate=0.5, min_accuracy=0.85)

    assert met is not None and met.binding == "accuracy" and met.point.threshold == 0.45
    assert missed is not None and missed.binding == "budget" and missed.accuracy_met is False
    assert missed.point.threshold == 0.6
    assert "budget binds" in missed.reason


def test_nothing_is_recommended_when_nothing_qualifies() -> None:
    points = curve(FRAMES, thresholds=[t for t, *_ in BY_HAND])
    costly = [p for p in points if p.escalation_rate > 0]

    assert recommend(points, min_accuracy=0.95) is None
    assert recommend(costly, max_escalation_rate=0.1) is None
    assert recommend([], max_escalation_rate=0.1) is None


def test_no_records_make_an_empty_curve() -> None:
    assert curve([]) == []
    assert curve([], thresholds=[0.5]) == []


@pytest.mark.parametrize("confidence", [math.nan, math.inf, -math.inf, -0.01, 1.5])
def test_it_refuses_a_confidence_that_is_not_a_probability(confidence: float) -> None:
    records = [*FRAMES[:3], Record(confidence, "a", truth="a", cloud_label="a")]

    with pytest.raises(ValueError, match="confidence 3"):
        curve(records)


@pytest.mark.parametrize("threshold", [math.nan, math.inf, -0.5, 2.0])
def test_it_refuses_a_threshold_that_is_not_a_probability(threshold: float) -> None:
    with pytest.raises(ValueError, match="threshold"):
        curve(FRAMES, thresholds=[0.5, threshold])


def test_it_refuses_a_recommendation_without_a_constraint_or_with_a_bad_one() -> None:
    points = curve(FRAMES)

    with pytest.raises(ValueError, match="give max_escalation_rate"):
        recommend(points)
    with pytest.raises(ValueError, match="max_escalation_rate"):
        recommend(points, max_escalation_rate=math.nan)
    with pytest.raises(ValueError, match="min_accuracy"):
        recommend(points, min_accuracy=1.2)

"""Agreement between a shadow candidate and the model in service, frame by frame."""

from __future__ import annotations

import pytest

from agent.kernel.agreement import agreement, iou, matched_boxes
from agent.kernel.decode import Detection, Result


def box(label: str, x1: float, y1: float, x2: float, y2: float) -> Detection:
    return Detection(label=label, class_id=0, score=0.9, box=(x1, y1, x2, y2))


def detected(*boxes: Detection) -> Result:
    return Result(label=boxes[0].label if boxes else None, confidence=0.9, detections=list(boxes))


def classified(label: str) -> Result:
    return Result(label=label, confidence=0.8, top=[(label, 0.8)])


def test_iou_of_identical_disjoint_and_half_overlapping_boxes() -> None:
    assert iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert iou((0, 0, 10, 10), (20, 20, 30, 30)) == 0.0
    assert iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(50 / 150)
    assert iou((0, 0, 0, 10), (0, 0, 0, 10)) == 0.0, "an empty box overlaps nothing"


def test_classifiers_agree_on_the_top_class_only() -> None:
    assert agreement(classified("ok"), classified("ok")) == (1, 1)
    assert agreement(classified("ok"), classified("dent")) == (1, 0)


def test_detectors_count_one_slot_per_box_of_the_larger_set_and_match_class_for_class_at_half_iou() -> None:
    active = detected(box("screw", 0, 0, 10, 10), box("nut", 50, 50, 60, 60))
    assert agreement(active, detected(box("screw", 1, 1, 11, 11), box("nut", 50, 50, 60, 60))) == (2, 2)
    assert agreement(active, detected(box("screw", 1, 1, 11, 11))) == (2, 1), "a missed box costs"
    extra = detected(box("screw", 0, 0, 10, 10), box("nut", 50, 50, 60, 60), box("nut", 80, 80, 90, 90))
    assert agreement(active, extra) == (3, 2), "an extra box costs"
    assert agreement(active, detected(box("nut", 0, 0, 10, 10), box("screw", 50, 50, 60, 60))) == (2, 0)
    assert agreement(active, detected(box("screw", 6, 0, 16, 10))) == (2, 0), "IoU 0.25 is no match"
    assert agreement(detected(), detected()) == (1, 1), "both see nothing: they agree"


def test_each_box_is_matched_once_best_overlap_first() -> None:
    active = [box("screw", 0, 0, 10, 10), box("screw", 2, 0, 12, 10)]
    # One candidate box overlaps both; the better pair wins, the other active box stays unmatched.
    assert matched_boxes(active, [box("screw", 2, 0, 12, 10)]) == 1
    assert matched_boxes(active, [box("screw", 2, 0, 12, 10), box("screw", 0, 0, 10, 10)]) == 2

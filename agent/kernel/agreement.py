"""How far a candidate model agrees with the model in service on the same frame (shadow runs).

A classifier agrees when its top-1 class is the one in service. A detector's
boxes are matched greedily, best IoU first, class for class, at IoU >= 0.5
(the usual detection match); each frame counts ``max(len(a), len(b))`` slots
of which the matched pairs agree, so a missed box and an extra box both
cost. Two detectors that both see nothing agree on one slot.

Pure functions over ``Result``: the agent computes agreement while shadowing,
and the control plane or a simulator can compute it the same way.
"""

from __future__ import annotations

from agent.kernel.decode import Detection, Result

MATCH_IOU = 0.5


def iou(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    """Intersection over union of two ``x1, y1, x2, y2`` boxes; 0 when either is empty."""
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    if width <= 0 or height <= 0:
        return 0.0
    inter = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def matched_boxes(active: list[Detection], candidate: list[Detection], *, threshold: float = MATCH_IOU) -> int:
    """How many pairs of same-class boxes match at ``threshold`` IoU or more, each box used once."""
    pairs = sorted(
        (
            (iou(a.box, c.box), i, j)
            for i, a in enumerate(active)
            for j, c in enumerate(candidate)
            if a.label == c.label
        ),
        reverse=True,
    )
    used_a: set[int] = set()
    used_c: set[int] = set()
    for overlap, i, j in pairs:
        if overlap < threshold:
            break
        if i in used_a or j in used_c:
            continue
        used_a.add(i)
        used_c.add(j)
    return len(used_a)


def agreement(active: Result, candidate: Result) -> tuple[int, int]:
    """``(compared, agreed)`` slots for one frame decided by both models."""
    if active.detections or candidate.detections:
        compared = max(len(active.detections), len(candidate.detections))
        return compared, matched_boxes(active.detections, candidate.detections)
    return 1, int(active.label == candidate.label)

"""Hybrid edge/cloud classification: accuracy and upload cost of escalating unsure frames, on two labelled sets.

The edge model answers every frame; a frame whose top-1 confidence is below
the threshold is uploaded and the cloud model's answer replaces the edge's.
Both models run through the agent's own ``ModelSession`` (the device's
pre-processing and decoding, onnxruntime CPU, ``intra_op_num_threads`` 1 for
each, ``inter_op_num_threads`` 1), on:

* ``parts``: crops of the project's rendered parts (``zoo.samples``) under
  normal, ``wide`` and ``dark`` lighting; edge ``parts-classifier``, cloud
  ``cloud-classifier``;
* ``digits``: the held-out half of scikit-learn's handwritten digits
  (``zoo.digits``); edge ``digits-edge``, cloud ``digits-cloud``.

Accuracy is scored against the set's true labels. Bytes uploaded are the
JPEG files the agent would queue for the escalated frames (``cv2.imencode``
at the agent's default quality, 85), summed. The advisor
(``escalations.advisor``) picks the most accurate threshold within a 10 %
upload budget, and the cheapest one within it that reaches the target:
hybrid accuracy >= 97 % of cloud-only while uploading <= 10 % of frames.
Picked on the frames it is scored on, a threshold flatters itself, so both
picks are also made on the even-numbered frames and scored on the odd ones. Then the cloud model's throughput on ready
tensors: one frame per ``session.run`` against batches of 8 and 32, in
interleaved blocks, as frames/s and the ratio to one frame per call
(``intra_op_num_threads`` 1 unless ``--cloud-threads`` says otherwise).

    .venv/bin/python -m bench.hybrid                      # JSON lines
    .venv/bin/python -m bench.hybrid --format table       # the Markdown tables of docs/hybrid.md
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import cv2
import numpy as np
import numpy.typing as npt

import zoo
from agent.config import EscalationSettings, InferenceSettings
from agent.inference import ModelSession
from escalations import advisor
from zoo import digits, render, samples

# Distinct from the training, held-out, reference, calibration and video seeds of zoo/.
PARTS_SEEDS: dict[render.Condition, int] = {"normal": 6_001, "wide": 6_002, "dark": 6_003}
JPEG_QUALITY = EscalationSettings().jpeg_quality
TARGET_SHARE_OF_CLOUD = 0.97
BUDGET = 0.10


@dataclass
class Frame:
    image: npt.NDArray[np.uint8]
    """BGR, as the agent receives it."""
    label: str
    group: str


@dataclass
class Scored:
    frames: list[Frame]
    edge_label: list[str]
    edge_confidence: npt.NDArray[np.float64]
    cloud_label: list[str]
    jpeg_bytes: npt.NDArray[np.int64]


def parts_frames(counts: dict[render.Condition, int]) -> list[Frame]:
    frames = []
    for condition, count in counts.items():
        if count <= 0:
            continue
        for sample in samples.calibration_crops(count, seed=PARTS_SEEDS[condition], condition=condition):
            bgr = np.ascontiguousarray(np.asarray(sample.image.convert("RGB"))[:, :, ::-1])
            frames.append(Frame(bgr, sample.label, condition))
    return frames


def digits_frames() -> list[Frame]:
    data = digits.split()
    return [
        Frame(digits.bgr(frame), str(label), "test")
        for frame, label in zip(data.test_frames, data.test_labels, strict=True)
    ]


def load(name: str, threads: int) -> ModelSession:
    settings = InferenceSettings(intra_op_threads=threads, inter_op_threads=1)
    return ModelSession.from_metadata(zoo.metadata_path(name), settings=settings)


def jpeg_size(image: npt.NDArray[np.uint8]) -> int:
    ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return int(encoded.size)


def score(frames: list[Frame], edge: ModelSession, cloud: ModelSession) -> Scored:
    edge_results = [edge.infer(f.image) for f in frames]
    cloud_results = [cloud.infer(f.image) for f in frames]
    return Scored(
        frames=frames,
        edge_label=[str(r.label) for r in edge_results],
        edge_confidence=np.array([r.confidence for r in edge_results], dtype=np.float64),
        cloud_label=[str(r.label) for r in cloud_results],
        jpeg_bytes=np.array([jpeg_size(f.image) for f in frames], dtype=np.int64),
    )


def records(scored: Scored) -> list[advisor.Record]:
    # Every frame here has its true label, as if a reviewer had labelled them all.
    return [
        advisor.Record(float(c), e, truth=f.label, cloud_label=k)
        for f, e, c, k in zip(scored.frames, scored.edge_label, scored.edge_confidence, scored.cloud_label, strict=True)
    ]


def row(
    dataset: str, mode: str, scored: Scored, escalated: npt.NDArray[np.bool_], threshold: float | None
) -> dict[str, Any]:
    truth = [f.label for f in scored.frames]
    answers = [k if up else e for e, k, up in zip(scored.edge_label, scored.cloud_label, escalated, strict=True)]
    right = sum(a == t for a, t in zip(answers, truth, strict=True))
    return {
        "dataset": dataset,
        "mode": mode,
        "threshold": threshold,
        "frames": len(truth),
        "accuracy": round(right / len(truth), 4),
        "uploaded_frames": int(escalated.sum()),
        "upload_rate": round(float(escalated.mean()), 4),
        "uploaded_jpeg_bytes": int(scored.jpeg_bytes[escalated].sum()),
    }


def subset(scored: Scored, index: list[int]) -> Scored:
    return Scored(
        frames=[scored.frames[i] for i in index],
        edge_label=[scored.edge_label[i] for i in index],
        edge_confidence=scored.edge_confidence[index],
        cloud_label=[scored.cloud_label[i] for i in index],
        jpeg_bytes=scored.jpeg_bytes[index],
    )


def advised(dataset: str, mode: str, picked_on: Scored, scored_on: Scored, target: bool) -> dict[str, Any] | None:
    """The advisor's point for the 10 % budget (and the 97 % target when ``target``), picked on one set, scored on
    another."""
    cloud_accuracy = row(dataset, "", picked_on, np.ones(len(picked_on.frames), dtype=bool), None)["accuracy"]
    chosen = advisor.recommend(
        advisor.curve(records(picked_on)),
        max_escalation_rate=BUDGET,
        min_accuracy=TARGET_SHARE_OF_CLOUD * cloud_accuracy if target else None,
    )
    if chosen is None:
        return None
    point = chosen.point
    result = row(dataset, mode, scored_on, scored_on.edge_confidence < point.threshold, point.threshold)
    result["advisor_expected_accuracy"] = round(point.expected_accuracy, 4)
    result["binding"] = chosen.binding
    result["reason"] = chosen.reason
    return result


def evaluate(dataset: str, scored: Scored, thresholds: list[float], default_threshold: float) -> list[dict[str, Any]]:
    rows = []
    # The advisor's pick is also shown picked on the even frames and scored on the odd ones: in-sample it flatters.
    even, odd = (subset(scored, list(range(start, len(scored.frames), 2))) for start in (0, 1))
    for part, sample in (("all", scored), ("odd half", odd)):
        everyone = np.ones(len(sample.frames), dtype=bool)
        cloud_only = row(dataset, "cloud-only", sample, everyone, None)
        part_rows = [row(dataset, "edge-only", sample, ~everyone, None), cloud_only]
        if part == "all":
            for t in sorted({*thresholds, default_threshold}):
                hybrid = row(dataset, "hybrid", sample, sample.edge_confidence < t, t)
                if t == default_threshold:
                    hybrid["mode"] = "hybrid (model default)"
                part_rows.append(hybrid)
            picks = [
                advised(dataset, "advisor: best within 10 %", scored, scored, target=False),
                advised(dataset, "advisor: cheapest >= 97 % within 10 %", scored, scored, target=True),
            ]
        else:
            picks = [
                advised(dataset, "advisor: best within 10 %, picked on even half", even, odd, target=False),
                advised(dataset, "advisor: cheapest >= 97 %, picked on even half", even, odd, target=True),
            ]
        part_rows += [p for p in picks if p is not None]
        cloud_accuracy = cloud_only["accuracy"]
        for r in part_rows:
            r["frames_scored"] = part
            r["share_of_cloud_accuracy"] = round(r["accuracy"] / cloud_accuracy, 4) if cloud_accuracy else None
            r["share_of_cloud_bytes"] = round(r["uploaded_jpeg_bytes"] / cloud_only["uploaded_jpeg_bytes"], 4)
            r["meets_target"] = bool(
                r["upload_rate"] <= BUDGET and r["accuracy"] >= TARGET_SHARE_OF_CLOUD * cloud_accuracy
            )
        rows += part_rows
    return rows


def by_group(dataset: str, scored: Scored) -> list[dict[str, Any]]:
    out = []
    for group in dict.fromkeys(f.group for f in scored.frames):
        part = subset(scored, [i for i, f in enumerate(scored.frames) if f.group == group])
        truth = [f.label for f in part.frames]
        out.append(
            {
                "dataset": dataset,
                "group": group,
                "frames": len(truth),
                "edge_accuracy": round(
                    float(np.mean([a == t for a, t in zip(part.edge_label, truth, strict=True)])), 4
                ),
                "cloud_accuracy": round(
                    float(np.mean([a == t for a, t in zip(part.cloud_label, truth, strict=True)])), 4
                ),
                "edge_mean_confidence": round(float(part.edge_confidence.mean()), 4),
                "mean_jpeg_bytes": round(float(part.jpeg_bytes.mean()), 1),
            }
        )
    return out


def throughput(
    dataset: str, cloud: ModelSession, frames: list[Frame], batches: list[int], block_frames: int, rounds: int
) -> dict[str, Any]:
    threads = cloud.session.get_session_options().intra_op_num_threads
    """Frames/s of the bare ``session.run`` on ready tensors, per batch size, blocks interleaved round by round."""
    tensors = [cloud.preprocess(f.image)[0] for f in frames]
    while len(tensors) < block_frames:
        tensors = tensors + tensors
    tensors = tensors[:block_frames]
    prepared = {b: [np.concatenate(tensors[i : i + b]) for i in range(0, block_frames - b + 1, b)] for b in batches}
    run: Callable[[npt.NDArray[Any]], npt.NDArray[Any]] = cloud.run
    for b in batches:  # warm-up
        run(prepared[b][0])
    fps: dict[int, list[float]] = {b: [] for b in batches}
    ratios: dict[int, list[float]] = {b: [] for b in batches}
    for r in range(rounds):
        order = batches if r % 2 == 0 else list(reversed(batches))
        this_round = {}
        for b in order:
            start = time.perf_counter()
            for tensor in prepared[b]:
                run(tensor)
            elapsed = time.perf_counter() - start
            this_round[b] = len(prepared[b]) * b / elapsed
            fps[b].append(this_round[b])
        for b in batches:
            ratios[b].append(this_round[b] / this_round[batches[0]])
    return {
        "dataset": dataset,
        "cloud_model": cloud.name,
        "threads": f"intra_op {threads}, inter_op 1",
        "frames_per_block": block_frames,
        "rounds": rounds,
        **{f"fps_batch_{b}": round(statistics.median(fps[b]), 1) for b in batches},
        **{f"ratio_batch_{b}_vs_{batches[0]}": round(statistics.median(ratios[b]), 2) for b in batches[1:]},
    }


def table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    def cell(value: Any) -> str:
        if value is None:
            return "-"
        if isinstance(value, bool):
            return "yes" if value else "no"
        if isinstance(value, int):
            return f"{value:,}"
        if isinstance(value, float):
            return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"
        return str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--datasets", default="parts,digits")
    parser.add_argument("--parts", default="normal=240,wide=80,dark=80", help="crops per lighting condition")
    parser.add_argument("--thresholds", default="0.3,0.5,0.7,0.8,0.9,0.95", help="hybrid thresholds to tabulate")
    parser.add_argument("--batches", default="1,8,32")
    parser.add_argument("--block-frames", type=int, default=256, help="frames per throughput block")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--cloud-threads", type=int, default=1, help="intra_op_num_threads of the throughput run")
    parser.add_argument("--format", choices=["json", "table"], default="json")
    args = parser.parse_args(argv)
    thresholds = [float(t) for t in args.thresholds.split(",")]
    batches = [int(b) for b in args.batches.split(",")]
    if batches[0] != 1 or args.block_frames % max(batches):
        parser.error("--batches must start with 1 and divide --block-frames")
    counts: dict[render.Condition, int] = {}
    for item in args.parts.split(","):
        condition, _, count = item.partition("=")
        if condition not in PARTS_SEEDS or not count.isdigit():
            parser.error(f"--parts takes CONDITION=COUNT items, conditions {', '.join(PARTS_SEEDS)}; got {item!r}")
        counts[cast(render.Condition, condition)] = int(count)
    setups = {
        "parts": ("parts-classifier", "cloud-classifier", lambda: parts_frames(counts)),
        "digits": (digits.EDGE, digits.CLOUD, digits_frames),
    }
    results, groups, speeds = [], [], []
    for dataset in args.datasets.split(","):
        edge_name, cloud_name, make = setups[dataset]
        frames = make()
        edge, cloud = load(edge_name, 1), load(cloud_name, 1)
        scored = score(frames, edge, cloud)
        results += evaluate(dataset, scored, thresholds, edge.thresholds.escalate_below)
        groups += by_group(dataset, scored)
        timed = cloud if args.cloud_threads == 1 else load(cloud_name, args.cloud_threads)
        speeds.append(throughput(dataset, timed, frames, batches, args.block_frames, args.rounds))
    if args.format == "json":
        for item in (*groups, *results, *speeds):
            print(json.dumps(item), flush=True)
        return 0
    print(
        table(
            groups,
            [
                "dataset",
                "group",
                "frames",
                "edge_accuracy",
                "cloud_accuracy",
                "edge_mean_confidence",
                "mean_jpeg_bytes",
            ],
        )
    )
    print()
    print(
        table(
            results,
            [
                "dataset",
                "frames_scored",
                "mode",
                "threshold",
                "accuracy",
                "share_of_cloud_accuracy",
                "upload_rate",
                "uploaded_jpeg_bytes",
                "share_of_cloud_bytes",
                "meets_target",
            ],
        )
    )
    print()
    for r in results:
        if "reason" in r:
            print(
                f"- {r['dataset']}, {r['mode']}: threshold {r['threshold']:.4g}: {r['reason']}"
                f" (binding: {r['binding']})"
            )
    print()
    speed_columns = ["dataset", "cloud_model", "threads", *(k for k in speeds[0] if k.startswith(("fps_", "ratio_")))]
    print(table(speeds, speed_columns))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What shadowing a candidate costs the frame rate, against the same pipeline without one, in one run.

The threaded pipeline (lossless queue, window telemetry on) decides blocks of
camera-sized frames with the model in service alone, and with a candidate in
shadow at each budget; blocks alternate in pairs so drift in the machine's
speed hits both alike. Printed per budget: frames/s with and without, their
ratio (median of the pairs), the share of frames the candidate decided, and
its agreement with the model in service.

    .venv/bin/python -m bench.shadow                                     # parts-classifier beside itself
    .venv/bin/python -m bench.shadow --model zoo/onnx/parts-detector.onnx --candidate zoo/onnx/parts-detector.onnx

The stated budget: with ``inference.shadow_budget`` = b the candidate may take
b times the serving model's time, so frames/s keeps at least 1 / (1 + b) of
itself (80 % at the default 0.25) whatever the candidate costs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

import zoo
from agent.inference import ModelSession, SessionHolder
from agent.kernel import protocol
from agent.pipeline import Pipeline
from bench.agent_overhead import _Source, frames, load


def run_block(
    session: ModelSession, candidate: ModelSession | None, images: list[np.ndarray], budget: float
) -> tuple[float, protocol.ShadowSummary | None]:
    holder = SessionHolder(session)
    holder.set_shadow(candidate)
    pipeline = Pipeline(_Source(images), holder, lossless=True, shadow_budget=budget)
    start = time.perf_counter()
    pipeline.start()
    pipeline.wait()
    elapsed = time.perf_counter() - start
    pipeline.stop()
    window = protocol.Window.model_validate(pipeline.take_window())
    return pipeline.inferred / elapsed, window.shadow


def measure(
    session: ModelSession, candidate: ModelSession, images: list[np.ndarray], budget: float, pairs: int
) -> dict[str, Any]:
    ratios, alone, shadowed = [], [], []
    decided = compared = agreed = 0
    for p in range(pairs):
        fps: dict[bool, float] = {}
        for with_shadow in (True, False) if p % 2 == 0 else (False, True):
            rate, shadow = run_block(session, candidate if with_shadow else None, images, budget)
            fps[with_shadow] = rate
            if shadow is not None:
                decided += shadow.frames
                compared += shadow.compared
                agreed += shadow.agreed
        ratios.append(fps[True] / fps[False])
        alone.append(fps[False])
        shadowed.append(fps[True])
    return {
        "budget": budget,
        "floor": round(1 / (1 + budget), 3),
        "fps_alone": round(statistics.median(alone), 2),
        "fps_shadowing": round(statistics.median(shadowed), 2),
        "fps_ratio": round(statistics.median(ratios), 3),
        "shadowed_share": round(decided / (pairs * len(images)), 3),
        "agreement": round(agreed / compared, 4) if compared else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=zoo.onnx_path("parts-classifier"))
    parser.add_argument("--candidate", type=Path, help="the model in shadow (default: the same model)")
    parser.add_argument("--budgets", default="0.25,1,4", help="comma-separated shadow_budget values")
    parser.add_argument("--block", type=int, default=60, help="frames per block")
    parser.add_argument("--pairs", type=int, default=6)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--size", default="640x480", help="camera frame size, WIDTHxHEIGHT")
    args = parser.parse_args(argv)
    width, height = (int(v) for v in args.size.lower().split("x"))
    images = frames(args.block, width, height)
    session = load(args.model, args.threads)
    candidate = load(args.candidate or args.model, args.threads)
    run_block(session, candidate, images[:10], 1.0)  # warm both sessions up
    for budget in (float(b) for b in args.budgets.split(",")):
        row = {"model": args.model.name, "candidate": (args.candidate or args.model).name}
        row.update(measure(session, candidate, images, budget, args.pairs))
        print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

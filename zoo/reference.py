"""The reference distribution CI publishes with a classifier: its drift baseline.

Measured with the agent's own inference code (pre-processing, decoding) on
freshly rendered held-out crops under normal line lighting, so the control
plane compares a device's confidence histogram with what the same code gave
in CI. Drift needs at least ``telemetry.drift.MIN_FRAMES`` frames on each
side, hence the default of 2,000.

    python -m zoo.reference parts-classifier --count 2000 > reference.json
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np

from agent.inference import ModelSession
from agent.kernel import histogram
from zoo import samples

MODELS = Path(__file__).resolve().parent
# Distinct from the training, held-out, reference, calibration and video seeds.
REFERENCE_DISTRIBUTION_SEED = 5_003


def distribution(name: str, count: int = 2000, seed: int = REFERENCE_DISTRIBUTION_SEED) -> dict[str, object]:
    """Confidence bin counts and top-1 class counts of ``name`` over ``count`` rendered crops."""
    session = ModelSession.from_metadata(MODELS / f"{name}.json")
    confidences: list[float] = []
    classes: Counter[str] = Counter()
    for sample in samples.calibration_crops(count, seed=seed, condition="normal"):
        # The agent sees frames as OpenCV reads them: BGR.
        result = session.infer(np.ascontiguousarray(np.asarray(sample.image.convert("RGB"))[:, :, ::-1]))
        confidences.append(result.confidence)
        if result.label is not None:
            classes[result.label] += 1
    return {"confidence": histogram.confidence_histogram(confidences), "classes": dict(sorted(classes.items()))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", help="a classifier under models/, e.g. parts-classifier")
    parser.add_argument("--count", type=int, default=2000)
    args = parser.parse_args(argv)
    json.dump(distribution(args.name, args.count), sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

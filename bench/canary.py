"""Canary analysis against fixed thresholds on means: how often each stops a canary, side by side.

For each scenario, ``--runs`` seeded draws of a canary group and a control
group (per device-minute samples, as ``rollouts.analysis.samples`` returns
them, from the generator the tests use: each device its own level, each
minute varying around it), judged three ways on the same draws:

* ``judge``: ``rollouts.analysis.judge`` with its defaults (all five metrics);
* ``mean+20%``: fail when the canary's mean p95 latency is over 20 % above
  the control's (a bare threshold, as a generic OTA tool would gate);
* ``mean+10%``: the same at 10 %, the latency tolerance the judge uses;
* ``significance alone``: fail when the one-sided Mann-Whitney test on p95
  latency is significant at the judge's alpha, whatever the effect (the judge
  with a latency tolerance of zero, latency only).

Printed as JSON lines: per scenario and method the share of runs failed (and
for ``judge`` also marginal and passed), and the judge's time per call.

    .venv/bin/python -m bench.canary
    .venv/bin/python -m bench.canary --runs 500
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from dataclasses import replace
from typing import Any

import django
import numpy as np

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
django.setup()

from rollouts.analysis import DEFAULT_METRICS, judge  # noqa: E402
from tests.rollouts.test_analysis import minutes  # noqa: E402

# name: (canary devices, control devices, minutes, latency factor, minute-to-minute sigma)
SCENARIOS: dict[str, tuple[int, int, int, float, float]] = {
    "equal": (2, 10, 30, 1.00, 0.15),
    "equal, noisy": (2, 10, 30, 1.00, 0.40),
    "p95 +15%": (2, 10, 30, 1.15, 0.15),
    "p95 +15%, noisy": (2, 10, 30, 1.15, 0.40),
    "p95 +15%, noisy, soaked 2 h": (2, 10, 120, 1.15, 0.40),
    "p95 +30%": (2, 10, 30, 1.30, 0.15),
    "p95 +3%, 50 vs 100 devices x 200 min": (50, 100, 200, 1.03, 0.10),
}


# The judge's latency metric with no tolerance: significance alone decides.
SIGNIFICANCE_ALONE = (replace(DEFAULT_METRICS[0], tolerance=0.0),)


def run(name: str, runs: int) -> list[dict[str, Any]]:
    canary_devices, control_devices, soak, factor, sigma = SCENARIOS[name]
    verdicts: dict[str, int] = {"pass": 0, "marginal": 0, "fail": 0, "insufficient": 0}
    over_20 = over_10 = significant = 0
    timings = []
    for seed in range(runs):
        control = minutes(2 * seed, control_devices, soak, latency_sigma=sigma)
        canary = minutes(2 * seed + 1, canary_devices, soak, latency_ms=40.0 * factor, latency_sigma=sigma)
        start = time.perf_counter()
        verdicts[judge(canary, control).verdict] += 1
        timings.append(time.perf_counter() - start)
        ratio = float(np.mean(canary["latency_p95_ms"]) / np.mean(control["latency_p95_ms"]))
        over_20 += ratio > 1.20
        over_10 += ratio > 1.10
        significant += judge(canary, control, SIGNIFICANCE_ALONE).verdict == "fail"
    samples = f"{canary_devices * soak} vs {control_devices * soak}"
    return [
        {
            "scenario": name,
            "samples": samples,
            "method": "judge",
            "failed": verdicts["fail"] / runs,
            "marginal": verdicts["marginal"] / runs,
            "passed": verdicts["pass"] / runs,
            "judge_ms_median": round(1000 * statistics.median(timings), 2),
        },
        {"scenario": name, "samples": samples, "method": "mean+20%", "failed": over_20 / runs},
        {"scenario": name, "samples": samples, "method": "mean+10%", "failed": over_10 / runs},
        {"scenario": name, "samples": samples, "method": "significance alone", "failed": significant / runs},
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    args = parser.parse_args()
    for name in SCENARIOS:
        for line in run(name, args.runs):
            print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()

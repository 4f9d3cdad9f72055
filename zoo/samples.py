"""Reproducible image sets from `zoo.render`: reference crops, calibration sets, an image-folder "video".

numpy and Pillow only. Nothing here is committed in bulk: every set is cheap to
redraw from its seed, so the demo, the tests and the registry call these
functions instead of shipping folders of images.

    python -m zoo.samples video var/camera-1 --frames 120 --darken-after 60
    python -m zoo.samples reference var/reference --count 8
    python -m zoo.samples fixtures            # rewrites tests/fixtures/images/
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from zoo import render

FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "images"

# Seeds of the named sets; distinct from every training and held-out seed in zoo/train.py.
REFERENCE_SEED = 5_000
CALIBRATION_SEED = 5_001
VIDEO_SEED = 5_002


@dataclass(frozen=True)
class Sample:
    name: str
    image: Image.Image
    label: str
    """The crop's true label (classification) or ``"frame"``."""


def reference_crops(count: int = 8, size: int = 128, seed: int = REFERENCE_SEED) -> list[Sample]:
    """Part crops cycling through every label under normal light: reference inputs for a classifier bundle."""
    if count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
    rng = np.random.default_rng(seed)
    samples = []
    for i in range(count):
        label = render.LABELS[i % len(render.LABELS)]
        image = render.render_crop(rng, size, label=label).image
        samples.append(Sample(name=f"ref-{i:03d}-{label}", image=image, label=label))
    return samples


def reference_frames(count: int = 4, size: int = 256, seed: int = REFERENCE_SEED) -> list[Sample]:
    """Whole frames under normal light: reference inputs for a detector bundle."""
    if count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
    rng = np.random.default_rng(seed)
    return [
        Sample(name=f"frame-{i:03d}", image=render.render_frame(rng, size, size).image, label="frame")
        for i in range(count)
    ]


def calibration_crops(
    count: int = 64, size: int = 128, seed: int = CALIBRATION_SEED, condition: render.Condition = "wide"
) -> list[Sample]:
    """A varied set (``wide`` lighting by default) for quantisation calibration or baseline statistics."""
    if count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
    rng = np.random.default_rng(seed)
    samples = []
    for i in range(count):
        frame = render.render_crop(rng, size, condition=condition)
        label = frame.parts[0].label if frame.parts else "ok"
        samples.append(Sample(name=f"cal-{i:03d}-{label}", image=frame.image, label=label))
    return samples


def video(
    frames: int,
    *,
    seed: int = VIDEO_SEED,
    width: int = 320,
    height: int = 240,
    defect_rate: float = 0.1,
    darken_after: int | None = None,
) -> Iterator[render.Frame]:
    """``frames`` consecutive camera frames; from frame ``darken_after`` on, the lamp fails (dark condition)."""
    if frames < 0:
        raise ValueError(f"frames must not be negative, got {frames}")
    stream = render.FrameStream(seed, width, height, defect_rate=defect_rate)
    for index in range(frames):
        if darken_after is not None and index >= darken_after:
            stream.condition = "dark"
        yield next(stream)


def write_video(
    directory: Path,
    frames: int,
    *,
    seed: int = VIDEO_SEED,
    width: int = 320,
    height: int = 240,
    defect_rate: float = 0.1,
    darken_after: int | None = None,
) -> Path:
    """Write ``frame-00000.png``... and ``truth.json`` (each part's kind, label and box per frame)."""
    directory.mkdir(parents=True, exist_ok=True)
    truth = []
    frames_ = video(frames, seed=seed, width=width, height=height, defect_rate=defect_rate, darken_after=darken_after)
    for index, frame in enumerate(frames_):
        name = f"frame-{index:05d}.png"
        frame.image.save(directory / name)
        truth.append(
            {
                "file": name,
                "condition": "dark" if darken_after is not None and index >= darken_after else "normal",
                "parts": [{"kind": p.kind, "label": p.label, "box": list(p.box)} for p in frame.parts],
            }
        )
    path = directory / "truth.json"
    path.write_text(json.dumps(truth, indent=1) + "\n")
    return path


def write_samples(directory: Path, samples: list[Sample]) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for sample in samples:
        path = directory / f"{sample.name}.png"
        sample.image.save(path)
        paths.append(path)
    return paths


def write_fixtures(directory: Path = FIXTURES) -> list[Path]:
    """The few small images committed for tests: one crop per label, a normal frame and a dark one."""
    crops = reference_crops(count=len(render.LABELS), size=96)
    rng = np.random.default_rng(REFERENCE_SEED + 1)
    normal = render.render_frame(rng, 256, 256, parts=3, defect_rate=0.0)
    dark = render.render_frame(rng, 256, 256, parts=3, defect_rate=0.0, condition="dark")
    paths = write_samples(
        directory,
        [
            *(Sample(name=f"crop-{s.label}", image=s.image, label=s.label) for s in crops),
            Sample(name="frame-normal", image=normal.image, label="frame"),
            Sample(name="frame-dark", image=dark.image, label="frame"),
        ],
    )
    truth = {
        **{f"crop-{s.label}.png": {"label": s.label} for s in crops},
        "frame-normal.png": {"parts": [{"kind": p.kind, "label": p.label, "box": list(p.box)} for p in normal.parts]},
        "frame-dark.png": {"parts": [{"kind": p.kind, "label": p.label, "box": list(p.box)} for p in dark.parts]},
    }
    (directory / "truth.json").write_text(json.dumps(truth, indent=1) + "\n")
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    vid = sub.add_parser("video", help="an image-folder video with truth.json")
    vid.add_argument("directory", type=Path)
    vid.add_argument("--frames", type=int, default=120)
    vid.add_argument("--seed", type=int, default=VIDEO_SEED)
    vid.add_argument("--width", type=int, default=320)
    vid.add_argument("--height", type=int, default=240)
    vid.add_argument("--defect-rate", type=float, default=0.1)
    vid.add_argument("--darken-after", type=int, default=None)
    ref = sub.add_parser("reference", help="reference crops for a classifier bundle")
    ref.add_argument("directory", type=Path)
    ref.add_argument("--count", type=int, default=8)
    cal = sub.add_parser("calibration", help="a varied calibration set")
    cal.add_argument("directory", type=Path)
    cal.add_argument("--count", type=int, default=64)
    fix = sub.add_parser("fixtures", help="rewrite the committed test images")
    fix.add_argument("directory", type=Path, nargs="?", default=FIXTURES)
    args = parser.parse_args(argv)
    try:
        if args.command == "video":
            path = write_video(
                args.directory,
                args.frames,
                seed=args.seed,
                width=args.width,
                height=args.height,
                defect_rate=args.defect_rate,
                darken_after=args.darken_after,
            )
            print(path)
        elif args.command == "reference":
            print("\n".join(map(str, write_samples(args.directory, reference_crops(args.count)))))
        elif args.command == "calibration":
            print("\n".join(map(str, write_samples(args.directory, calibration_crops(args.count)))))
        else:
            print("\n".join(map(str, write_fixtures(args.directory))))
    except ValueError as error:
        parser.error(str(error))
    return 0


if __name__ == "__main__":
    sys.exit(main())

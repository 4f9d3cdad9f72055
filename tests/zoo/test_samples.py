"""Sample sets: reference crops, image-folder videos and the committed fixtures are drawn reproducibly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from zoo import render, samples


def test_reference_crops_cycle_through_every_label() -> None:
    crops = samples.reference_crops(count=8, size=64)

    assert [s.label for s in crops] == list(render.LABELS) * 2
    assert all(s.image.size == (64, 64) for s in crops)
    assert len({s.name for s in crops}) == 8


def test_a_video_folder_holds_its_frames_and_the_truth_about_them(tmp_path: Path) -> None:
    truth_path = samples.write_video(tmp_path / "cam", 3, width=96, height=72, darken_after=2)

    truth = json.loads(truth_path.read_text())
    assert [t["file"] for t in truth] == ["frame-00000.png", "frame-00001.png", "frame-00002.png"]
    assert [t["condition"] for t in truth] == ["normal", "normal", "dark"]
    for entry in truth:
        with Image.open(tmp_path / "cam" / entry["file"]) as image:
            assert image.size == (96, 72)
        assert all(part["kind"] in render.PART_KINDS for part in entry["parts"])


def test_the_same_video_comes_out_twice() -> None:
    first = [np.asarray(f.image) for f in samples.video(2, width=64, height=64)]
    second = [np.asarray(f.image) for f in samples.video(2, width=64, height=64)]

    assert all(np.array_equal(a, b) for a, b in zip(first, second, strict=True))


def test_the_committed_fixtures_are_what_the_code_draws(tmp_path: Path) -> None:
    samples.write_fixtures(tmp_path)

    committed = sorted(p.name for p in samples.FIXTURES.iterdir())
    assert committed == sorted(p.name for p in tmp_path.iterdir())
    for name in committed:
        if name.endswith(".png"):
            with Image.open(samples.FIXTURES / name) as ours, Image.open(tmp_path / name) as fresh:
                assert np.array_equal(np.asarray(ours), np.asarray(fresh)), name
    truth = json.loads((samples.FIXTURES / "truth.json").read_text())
    assert truth == json.loads((tmp_path / "truth.json").read_text())


@pytest.mark.parametrize(
    "call",
    [
        lambda: samples.reference_crops(count=0),
        lambda: samples.calibration_crops(count=0),
        lambda: list(samples.video(-1)),
        lambda: list(samples.video(1, defect_rate=2.0)),
    ],
)
def test_bad_counts_and_rates_are_refused(call: object) -> None:
    with pytest.raises(ValueError, match="must"):
        call()  # type: ignore[operator]


def test_the_command_line_reports_bad_input_as_a_usage_error(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        samples.main(["reference", str(tmp_path), "--count", "0"])

    assert exit_info.value.code == 2
    assert "count must be at least 1" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())

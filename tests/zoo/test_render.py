"""The frame renderer: reproducible, honest about what it drew, and strict about its inputs."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from zoo import render


def test_the_same_seed_draws_the_same_frame() -> None:
    first = render.render_frame(np.random.default_rng(42), 160, 120, defect_rate=0.5)
    second = render.render_frame(np.random.default_rng(42), 160, 120, defect_rate=0.5)

    assert np.array_equal(np.asarray(first.image), np.asarray(second.image))
    assert first.parts == second.parts


def test_a_frame_reports_every_part_with_a_box_inside_the_image() -> None:
    frame = render.render_frame(np.random.default_rng(1), 320, 240, parts=4)

    assert frame.image.size == (320, 240)
    assert 1 <= len(frame.parts) <= 4
    for part in frame.parts:
        x0, y0, x1, y1 = part.box
        assert 0 <= x0 < x1 <= 320 and 0 <= y0 < y1 <= 240
        assert part.kind in render.PART_KINDS
        assert part.label in render.LABELS


def test_the_defect_rate_decides_how_many_parts_are_bad() -> None:
    rng = np.random.default_rng(3)
    clean = [render.render_frame(rng, 96, 96, defect_rate=0.0) for _ in range(5)]
    bad = [render.render_frame(rng, 96, 96, defect_rate=1.0) for _ in range(5)]

    assert not any(frame.defective for frame in clean)
    assert all(part.defective for frame in bad for part in frame.parts)


def test_dark_frames_are_much_darker_than_normal_ones() -> None:
    rng = np.random.default_rng(5)
    normal = np.mean([np.asarray(render.render_crop(rng, 64).image).mean() for _ in range(6)])
    dark = np.mean([np.asarray(render.render_crop(rng, 64, condition="dark").image).mean() for _ in range(6)])

    assert dark < normal * 0.45


def test_a_stream_can_darken_midway_and_stays_reproducible() -> None:
    def brightness(seed: int) -> list[float]:
        stream = render.FrameStream(seed, 64, 64)
        values = []
        for index in range(4):
            stream.condition = "dark" if index >= 2 else "normal"
            values.append(float(np.asarray(next(stream).image).mean()))
        return values

    values = brightness(9)
    assert values == brightness(9)
    assert max(values[2:]) < min(values[:2])


def test_crop_part_pads_a_box_at_the_frame_edge() -> None:
    image = Image.new("RGB", (50, 40), (10, 20, 30))

    crop = render.crop_part(image, (0.0, 0.0, 20.0, 30.0), 32)

    assert crop.size == (32, 32)
    assert np.asarray(crop).reshape(-1, 3).min(axis=0).tolist() == [10, 20, 30]


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda rng: render.render_frame(rng, condition="foggy"), "unknown lighting condition"),
        (lambda rng: render.render_frame(rng, defect_rate=1.5), "defect_rate must be between 0 and 1"),
        (lambda rng: render.render_frame(rng, parts=20), "parts must be between 0 and 8"),
        (lambda rng: render.render_frame(rng, 8, 8), "at least 16x16"),
        (lambda rng: render.render_crop(rng, label="dent"), "unknown label 'dent'"),
        (lambda rng: render.render_crop(rng, kind="bolt"), "unknown part kind 'bolt'"),
    ],
)
def test_it_refuses_bad_arguments_with_a_clear_message(call: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call(np.random.default_rng(0))  # type: ignore[operator]

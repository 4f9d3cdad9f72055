"""Seeded renderer of industrial inspection frames: machined parts on a conveyor.

Everything here is drawn with numpy and Pillow, so frames can be produced at run
time by the demo and the tests as well as offline for training. The same seed
always gives the same pixels.

A scene is a textured belt with a few parts on it (washers, gears, brackets in
steel, aluminium, brass or black oxide), each at its own position, rotation and
scale, casting a soft shadow. A part is either ``ok`` or carries one defect:

* ``crack``: a dark, jagged fracture running in from an edge;
* ``missing_hole``: a bore or bolt hole that was never drilled;
* ``scratch``: a few thin, bright, nearly parallel score marks.

The camera then applies lighting (brightness, contrast, colour temperature, an
uneven illumination field), optical blur and sensor noise. ``condition="dark"``
is the drift scenario: a lamp failed, the frames are much darker and noisier.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

LABELS: tuple[str, ...] = ("ok", "crack", "missing_hole", "scratch")
"""Classifier labels, in output order."""

PART_KINDS: tuple[str, ...] = ("washer", "gear", "bracket")
"""Detector labels, in output order."""

Condition = Literal["normal", "dark", "wide"]
"""``normal`` lighting, ``dark`` (the drift scenario), or ``wide``: mostly normal, a share dim or dark."""

# Drawing happens at this many times the output resolution, then is reduced:
# Pillow's polygons and lines are not anti-aliased on their own.
_SUPERSAMPLE = 3

_MATERIALS: dict[str, tuple[float, float, float]] = {
    "steel": (0.62, 0.64, 0.67),
    "aluminium": (0.78, 0.79, 0.80),
    "brass": (0.74, 0.62, 0.36),
    "black_oxide": (0.30, 0.30, 0.32),
}


@dataclass(frozen=True)
class Lighting:
    """How the camera sees the scene."""

    brightness: float = 1.0
    """Multiplier on the lit scene (1.0 is a well-exposed line)."""
    contrast: float = 1.0
    warmth: float = 0.0
    """-1 is a cold (bluish) lamp, +1 a warm (yellowish) one."""
    blur: float = 0.0
    """Gaussian blur radius in output pixels (focus, motion)."""
    noise: float = 2.0
    """Sensor read noise, standard deviation in 8-bit levels."""


def sample_lighting(rng: np.random.Generator, condition: Condition = "normal") -> Lighting:
    """Draw lighting for one frame under ``condition``."""
    if condition == "wide":
        roll = rng.random()
        if roll < 0.15:
            condition = "dark"
        elif roll < 0.35:
            return Lighting(
                brightness=float(rng.uniform(0.3, 0.75)),
                contrast=float(rng.uniform(0.7, 1.1)),
                warmth=float(rng.uniform(-0.6, 0.6)),
                blur=float(rng.uniform(0.0, 1.2)),
                noise=float(rng.uniform(2.0, 8.0)),
            )
        else:
            condition = "normal"
    if condition == "dark":
        return Lighting(
            brightness=float(rng.uniform(0.14, 0.28)),
            contrast=float(rng.uniform(0.6, 0.9)),
            warmth=float(rng.uniform(-0.3, 0.8)),
            blur=float(rng.uniform(0.0, 1.0)),
            noise=float(rng.uniform(3.0, 7.0)),
        )
    if condition != "normal":
        raise ValueError(f"unknown lighting condition {condition!r}; expected normal, dark or wide")
    return Lighting(
        brightness=float(rng.uniform(0.75, 1.25)),
        contrast=float(rng.uniform(0.8, 1.15)),
        warmth=float(rng.uniform(-0.5, 0.5)),
        blur=float(rng.uniform(0.0, 0.9)) if rng.random() < 0.6 else 0.0,
        noise=float(rng.uniform(1.0, 5.0)),
    )


@dataclass(frozen=True)
class Placement:
    """One part in a scene, in output pixels."""

    kind: str
    label: str
    cx: float
    cy: float
    radius: float
    """Half the part's largest extent."""
    angle: float
    """Rotation in radians."""
    material: str = "steel"

    def __post_init__(self) -> None:
        if self.kind not in PART_KINDS:
            raise ValueError(f"unknown part kind {self.kind!r}; expected one of {', '.join(PART_KINDS)}")
        if self.label not in LABELS:
            raise ValueError(f"unknown label {self.label!r}; expected one of {', '.join(LABELS)}")
        if self.material not in _MATERIALS:
            raise ValueError(f"unknown material {self.material!r}; expected one of {', '.join(_MATERIALS)}")
        if not self.radius > 0:
            raise ValueError(f"radius must be positive, got {self.radius}")


@dataclass(frozen=True)
class Part:
    """A part as it came out in a rendered frame."""

    kind: str
    label: str
    box: tuple[float, float, float, float]
    """x0, y0, x1, y1 in pixels of the frame, around the part's visible pixels."""

    @property
    def defective(self) -> bool:
        return self.label != "ok"


@dataclass(frozen=True)
class Frame:
    image: Image.Image
    parts: tuple[Part, ...] = field(default=())
    lighting: Lighting = field(default_factory=Lighting)

    @property
    def defective(self) -> bool:
        return any(part.defective for part in self.parts)


# ---------------------------------------------------------------- geometry


def _rotate(points: np.ndarray, angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.asarray(points @ np.array([[c, s], [-s, c]]))


def _circle(cx: float, cy: float, r: float) -> tuple[float, float, float, float]:
    return (cx - r, cy - r, cx + r, cy + r)


def _rounded_rect(w: float, h: float, r: float, steps: int = 6) -> np.ndarray:
    """Outline of a w x h rectangle centred on 0 with corner radius r."""
    pts: list[tuple[float, float]] = []
    corners = (
        (w / 2 - r, h / 2 - r, 0.0),
        (-w / 2 + r, h / 2 - r, 90.0),
        (-w / 2 + r, -h / 2 + r, 180.0),
        (w / 2 - r, -h / 2 + r, 270.0),
    )
    for x, y, start in corners:
        for i in range(steps + 1):
            a = math.radians(start + 90.0 * i / steps)
            pts.append((x + r * math.cos(a), y + r * math.sin(a)))
    return np.array(pts)


@dataclass
class _Shape:
    """A part in its own frame (unit radius, centred on 0), before placement."""

    outline: np.ndarray
    holes: list[tuple[float, float, float]]
    """cx, cy, r of every hole that is drilled."""
    missing: list[tuple[float, float, float]]
    """Holes that should be there but are not (the ``missing_hole`` defect)."""
    round: bool


def _shape(kind: str, label: str, rng: np.random.Generator) -> _Shape:
    holes: list[tuple[float, float, float]] = []
    if kind == "washer":
        outline = _rounded_rect(2.0, 2.0, 1.0, steps=24)
        holes = [(0.0, 0.0, float(rng.uniform(0.35, 0.55)))]
        round_ = True
    elif kind == "gear":
        teeth = int(rng.integers(10, 19))
        root = float(rng.uniform(0.78, 0.86))
        pts = []
        for i in range(teeth):
            base = 2 * math.pi * i / teeth
            step = 2 * math.pi / teeth
            for frac, radius in ((0.0, root), (0.18, 1.0), (0.5, 1.0), (0.68, root)):
                a = base + frac * step
                pts.append((radius * math.cos(a), radius * math.sin(a)))
        outline = np.array(pts)
        holes = [(0.0, 0.0, float(rng.uniform(0.18, 0.3)))]
        lightening = int(rng.choice([0, 4, 6]))
        for i in range(lightening):
            a = 2 * math.pi * i / lightening
            holes.append((0.52 * math.cos(a), 0.52 * math.sin(a), 0.12))
        round_ = True
    else:
        h = float(rng.uniform(0.75, 1.05))
        if rng.random() < 0.5:
            outline = _rounded_rect(2.0, h, 0.18)
            hole_r = 0.12
            xs = (-0.72, 0.72)
            ys = (-h / 2 + 0.25, h / 2 - 0.25) if h > 0.85 and rng.random() < 0.6 else (0.0,)
            holes = [(x, y, hole_r) for x in xs for y in ys]
        else:
            # An L bracket: a long arm and a short one, a hole at each end and one in the corner.
            t = 0.5 * h
            outline = np.array(
                [
                    (-1.0, -1.0 + 2 * t),
                    (-1.0, -1.0),
                    (1.0, -1.0),
                    (1.0, -1.0 + t),
                    (-1.0 + t, -1.0 + t),
                    (-1.0 + t, 0.6),
                    (-1.0, 0.6),
                ]
            )
            mid = -1.0 + t / 2
            holes = [(0.72, mid, 0.11), (mid, 0.3, 0.11), (mid, mid, 0.11)]
        round_ = False
    missing: list[tuple[float, float, float]] = []
    if label == "missing_hole":
        # Round parts lose their bore (the one hole every washer and gear has); brackets lose one bolt hole.
        missing.append(holes.pop(0 if round_ else int(rng.integers(len(holes)))))
    return _Shape(outline=outline, holes=holes, missing=missing, round=round_)


def _crack(rng: np.random.Generator, shape: _Shape) -> list[np.ndarray]:
    """A jagged fracture starting at the outer edge or at a hole, in unit coordinates."""
    if shape.holes and rng.random() < 0.4:
        hx, hy, hr = shape.holes[int(rng.integers(len(shape.holes)))]
        a = rng.uniform(0, 2 * math.pi)
        start = np.array([hx + hr * math.cos(a), hy + hr * math.sin(a)])
        heading = a
    else:
        idx = int(rng.integers(len(shape.outline)))
        start = shape.outline[idx] * 0.98
        heading = math.atan2(-start[1], -start[0]) + rng.uniform(-0.5, 0.5)
    length = rng.uniform(0.6, 1.0)
    segments = int(rng.integers(5, 9))
    pts = [start]
    for _ in range(segments):
        heading += rng.uniform(-0.6, 0.6)
        step = length / segments
        pts.append(pts[-1] + step * np.array([math.cos(heading), math.sin(heading)]))
    paths = [np.array(pts)]
    if rng.random() < 0.5:
        # A short side branch, as fractures often fork.
        k = int(rng.integers(2, len(pts)))
        branch_heading = heading + rng.choice([-1.0, 1.0]) * rng.uniform(0.6, 1.1)
        b = [pts[k]]
        for _ in range(3):
            branch_heading += rng.uniform(-0.4, 0.4)
            b.append(b[-1] + length / segments * 0.8 * np.array([math.cos(branch_heading), math.sin(branch_heading)]))
        paths.append(np.array(b))
    return paths


def _scratches(rng: np.random.Generator) -> list[np.ndarray]:
    count = int(rng.integers(3, 7))
    heading = rng.uniform(0, math.pi)
    direction = np.array([math.cos(heading), math.sin(heading)])
    normal = np.array([-direction[1], direction[0]])
    centre = rng.uniform(-0.3, 0.3, size=2)
    paths = []
    for _ in range(count):
        offset = centre + normal * rng.uniform(-0.3, 0.3)
        length = rng.uniform(0.5, 1.1)
        tilt = _rotate(direction[None, :], float(rng.uniform(-0.08, 0.08)))[0]
        shift = rng.uniform(-0.2, 0.2)
        paths.append(np.array([offset + tilt * (shift - length / 2), offset + tilt * (shift + length / 2)]))
    return paths


# ---------------------------------------------------------------- painting


def _blur(array: np.ndarray, radius: float) -> np.ndarray:
    if radius <= 0:
        return array
    img = Image.fromarray(np.clip(array * 255.0, 0, 255).astype(np.uint8))
    return np.asarray(img.filter(ImageFilter.GaussianBlur(radius)), dtype=np.float32) / 255.0


def _reduce(mask: Image.Image, width: int, height: int) -> np.ndarray:
    return np.asarray(mask.resize((width, height), Image.Resampling.BOX), dtype=np.float32) / 255.0


def _belt(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A worn conveyor belt: a dark base, coarse mottling, fine grain, and slat seams across the flow."""
    base = np.array(rng.choice([(0.22, 0.23, 0.24), (0.18, 0.21, 0.19), (0.27, 0.26, 0.24), (0.14, 0.15, 0.17)]))
    base = base * rng.uniform(0.85, 1.2)
    coarse = rng.normal(0, 1, (max(2, height // 24), max(2, width // 24))).astype(np.float32)
    coarse_img = Image.fromarray(((coarse * 0.25 + 0.5).clip(0, 1) * 255).astype(np.uint8))
    mottling = np.asarray(coarse_img.resize((width, height), Image.Resampling.BICUBIC), dtype=np.float32) / 255.0 - 0.5
    grain = _blur(rng.normal(0.5, 0.25, (height, width)).astype(np.float32).clip(0, 1), 0.7) - 0.5
    shade = 1.0 + 0.25 * mottling + 0.22 * grain
    period = rng.uniform(0.18, 0.35) * max(width, height)
    phase = rng.uniform(0, period)
    horizontal = rng.random() < 0.5
    coord = np.arange(width if horizontal else height, dtype=np.float32)
    seam = np.exp(-((((coord + phase) % period) - 1.5) ** 2) / 1.5)
    seam_field = seam[None, :] if horizontal else seam[:, None]
    shade = shade * (1.0 - 0.35 * seam_field)
    belt = base[None, None, :] * shade[:, :, None]
    # Dust and small bright specks of swarf.
    specks = rng.random((height, width)) < 0.002
    belt[specks] += rng.uniform(0.1, 0.3)
    return np.asarray(belt, dtype=np.float32)


def _paint_part(canvas: np.ndarray, placement: Placement, rng: np.random.Generator) -> tuple[float, ...] | None:
    height, width = canvas.shape[:2]
    ss = _SUPERSAMPLE
    shape = _shape(placement.kind, placement.label, rng)
    r = placement.radius

    def to_canvas(points: np.ndarray) -> list[tuple[float, float]]:
        placed = _rotate(points, placement.angle) * r + np.array([placement.cx, placement.cy])
        return [(float(x) * ss, float(y) * ss) for x, y in placed]

    mask = Image.new("L", (width * ss, height * ss), 0)
    draw = ImageDraw.Draw(mask)
    draw.polygon(to_canvas(shape.outline), fill=255)
    for hx, hy, hr in shape.holes:
        ((px, py),) = to_canvas(np.array([[hx, hy]]))
        draw.ellipse(_circle(px, py, hr * r * ss), fill=0)
    alpha = _reduce(mask, width, height)
    if alpha.max() < 0.5:
        return None

    # Marks drawn on the part: defects, and the faint centre-punch dimple a missing hole leaves.
    dark = Image.new("L", mask.size, 0)
    bright = Image.new("L", mask.size, 0)
    dark_draw, bright_draw = ImageDraw.Draw(dark), ImageDraw.Draw(bright)
    if placement.label == "crack":
        w = max(1, round(ss * max(1.5, 0.055 * r)))
        for path in _crack(rng, shape):
            dark_draw.line(to_canvas(path), fill=255, width=w, joint="curve")
    elif placement.label == "scratch":
        w = max(1, round(ss * max(1.0, 0.03 * r)))
        for path in _scratches(rng):
            bright_draw.line(to_canvas(path), fill=int(rng.integers(200, 256)), width=w)
    for hx, hy, hr in shape.missing:
        if rng.random() < 0.5:
            ((px, py),) = to_canvas(np.array([[hx, hy]]))
            dark_draw.ellipse(_circle(px, py, max(1.0, 0.15 * hr * r) * ss), fill=90)
    dark_mark = _reduce(dark, width, height) * alpha
    bright_mark = _reduce(bright, width, height) * alpha

    # Metal: a directional light gradient, a soft highlight, turned or brushed texture, darker rims.
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    dx, dy = (xs - placement.cx) / r, (ys - placement.cy) / r
    light = rng.uniform(0, 2 * math.pi)
    gradient = dx * math.cos(light) + dy * math.sin(light)
    hx, hy = 0.45 * math.cos(light), 0.45 * math.sin(light)
    highlight = np.exp(-((dx - hx) ** 2 + (dy - hy) ** 2) / (2 * 0.35**2))
    if shape.round:
        texture = 0.035 * np.sin(np.hypot(dx, dy) * r * rng.uniform(1.2, 2.2) + rng.uniform(0, 6.3))
    else:
        streaks = rng.normal(0, 1, (height, max(2, width // 10))).astype(np.float32)
        texture = 0.04 * np.asarray(Image.fromarray(streaks).resize((width, height), Image.Resampling.BILINEAR))
    colour = np.array(_MATERIALS[placement.material]) * rng.uniform(0.9, 1.1)
    tone = 0.88 + 0.14 * gradient + 0.28 * highlight + texture
    rim = np.clip(alpha - _blur(alpha, max(0.8, r * 0.05)), 0, 1)
    tone = tone * (1.0 - 0.9 * rim)
    part = colour[None, None, :] * tone[:, :, None]
    part = part * (1.0 - 0.9 * dark_mark[:, :, None]) + 0.6 * bright_mark[:, :, None]

    # Shadow away from the light, then the part over it.
    shadow = _blur(alpha, max(1.0, r * 0.08))
    shift = max(1, round(r * 0.08))
    sx, sy = round(-shift * math.cos(light)), round(-shift * math.sin(light))
    shadow = np.roll(np.roll(shadow, sy, axis=0), sx, axis=1)
    canvas *= (1.0 - 0.5 * shadow)[:, :, None]
    canvas[:] = canvas * (1.0 - alpha[:, :, None]) + part * alpha[:, :, None]

    visible = np.argwhere(alpha > 0.5)
    (y0, x0), (y1, x1) = visible.min(axis=0), visible.max(axis=0)
    return (float(x0), float(y0), float(x1 + 1), float(y1 + 1))


def _expose(scene: np.ndarray, lighting: Lighting, rng: np.random.Generator) -> Image.Image:
    height, width = scene.shape[:2]
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    u, v = xs / width - 0.5, ys / height - 0.5
    lamp = rng.uniform(-0.5, 0.5, size=2)
    field_ = 1.0 - 0.35 * ((u - lamp[0] * 0.5) ** 2 + (v - lamp[1] * 0.5) ** 2) + 0.1 * (u * lamp[0] + v * lamp[1])
    img = scene * field_[:, :, None] * lighting.brightness
    mean = img.mean()
    img = mean + (img - mean) * lighting.contrast
    img = img * np.array([1.0 + 0.12 * lighting.warmth, 1.0, 1.0 - 0.12 * lighting.warmth])[None, None, :]
    pixels = np.clip(img * 255.0, 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels, "RGB")
    if lighting.blur > 0.15:
        image = image.filter(ImageFilter.GaussianBlur(lighting.blur))
    values = np.asarray(image, dtype=np.float32)
    # Read noise plus shot noise, which grows with the signal.
    noisy = values + rng.normal(0, 1, values.shape) * np.sqrt(lighting.noise**2 + 0.08 * values)
    return Image.fromarray(np.clip(np.rint(noisy), 0, 255).astype(np.uint8), "RGB")


def render_scene(
    rng: np.random.Generator, width: int, height: int, placements: list[Placement], lighting: Lighting
) -> Frame:
    """Draw ``placements`` on a belt and expose them with ``lighting``."""
    if width < 16 or height < 16:
        raise ValueError(f"a frame must be at least 16x16 pixels, got {width}x{height}")
    canvas = _belt(rng, width, height)
    parts = []
    for placement in placements:
        # Paint within a window around the part (shadow included): the work stays per part, not per frame.
        reach = placement.radius * 1.5 + 4
        x0, y0 = max(0, math.floor(placement.cx - reach)), max(0, math.floor(placement.cy - reach))
        x1, y1 = min(width, math.ceil(placement.cx + reach)), min(height, math.ceil(placement.cy + reach))
        if x1 - x0 < 2 or y1 - y0 < 2:
            continue
        local = replace(placement, cx=placement.cx - x0, cy=placement.cy - y0)
        box = _paint_part(canvas[y0:y1, x0:x1], local, rng)
        if box is not None:
            bx0, by0, bx1, by1 = box
            parts.append(Part(kind=placement.kind, label=placement.label, box=(bx0 + x0, by0 + y0, bx1 + x0, by1 + y0)))
    return Frame(image=_expose(canvas, lighting, rng), parts=tuple(parts), lighting=lighting)


def _random_label(rng: np.random.Generator, defect_rate: float) -> str:
    if rng.random() >= defect_rate:
        return "ok"
    return str(rng.choice(LABELS[1:]))


def _check_rate(defect_rate: float) -> None:
    if not 0.0 <= defect_rate <= 1.0:
        raise ValueError(f"defect_rate must be between 0 and 1, got {defect_rate}")


def render_frame(
    rng: np.random.Generator,
    width: int = 256,
    height: int = 256,
    *,
    condition: Condition = "normal",
    lighting: Lighting | None = None,
    defect_rate: float = 0.1,
    parts: int | None = None,
) -> Frame:
    """A camera frame over the line with 1 to 4 parts (or ``parts``), none overlapping.

    Part sizes are relative to the frame, so any resolution shows the same scene.
    """
    _check_rate(defect_rate)
    count = int(rng.integers(1, 5)) if parts is None else parts
    if not 0 <= count <= 8:
        raise ValueError(f"parts must be between 0 and 8, got {count}")
    side = min(width, height)
    placed: list[Placement] = []
    for _ in range(count):
        for _attempt in range(30):
            radius = float(rng.uniform(0.075, 0.16)) * side
            cx = float(rng.uniform(radius, width - radius))
            cy = float(rng.uniform(radius, height - radius))
            if all(math.hypot(cx - p.cx, cy - p.cy) > radius + p.radius + 2 for p in placed):
                break
        else:
            continue
        placed.append(
            Placement(
                kind=str(rng.choice(PART_KINDS)),
                label=_random_label(rng, defect_rate),
                cx=cx,
                cy=cy,
                radius=radius,
                angle=float(rng.uniform(0, 2 * math.pi)),
                material=str(rng.choice(list(_MATERIALS))),
            )
        )
    return render_scene(rng, width, height, placed, lighting or sample_lighting(rng, condition))


def render_crop(
    rng: np.random.Generator,
    size: int = 96,
    *,
    label: str | None = None,
    kind: str | None = None,
    condition: Condition = "normal",
    lighting: Lighting | None = None,
) -> Frame:
    """One part filling most of a square ``size`` crop, as a detector box enlarged by ~1.3 would cut it.

    ``label`` and ``kind`` default to a uniform draw.
    """
    label = str(rng.choice(LABELS)) if label is None else label
    kind = str(rng.choice(PART_KINDS)) if kind is None else kind
    radius = float(rng.uniform(0.3, 0.42)) * size
    jitter = 0.06 * size
    placement = Placement(
        kind=kind,
        label=label,
        cx=size / 2 + float(rng.uniform(-jitter, jitter)),
        cy=size / 2 + float(rng.uniform(-jitter, jitter)),
        radius=radius,
        angle=float(rng.uniform(0, 2 * math.pi)),
        material=str(rng.choice(list(_MATERIALS))),
    )
    return render_scene(rng, size, size, [placement], lighting or sample_lighting(rng, condition))


def crop_part(
    image: Image.Image, box: tuple[float, float, float, float], size: int, margin: float = 1.3
) -> Image.Image:
    """Cut a square around ``box`` enlarged by ``margin`` (padding with edge pixels) and resize it to ``size``."""
    x0, y0, x1, y1 = box
    side = max(x1 - x0, y1 - y0) * margin
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    area = (round(cx - side / 2), round(cy - side / 2), round(cx + side / 2), round(cy + side / 2))
    pad = max(0, -area[0], -area[1], area[2] - image.width, area[3] - image.height)
    if pad:
        padded = np.pad(np.asarray(image), ((pad, pad), (pad, pad), (0, 0)), mode="edge")
        image = Image.fromarray(padded)
        area = (area[0] + pad, area[1] + pad, area[2] + pad, area[3] + pad)
    return image.crop(area).resize((size, size), Image.Resampling.BILINEAR)


class FrameStream:
    """An endless, reproducible stream of frames: what a simulated camera sees.

    ``condition`` and ``defect_rate`` may be changed between frames (a lamp
    failing, a tool wearing out); the stream stays reproducible for a given
    sequence of changes.
    """

    def __init__(
        self,
        seed: int = 0,
        width: int = 256,
        height: int = 256,
        *,
        condition: Condition = "normal",
        defect_rate: float = 0.1,
    ) -> None:
        _check_rate(defect_rate)
        self.rng = np.random.default_rng(seed)
        self.width, self.height = width, height
        self.condition: Condition = condition
        self.defect_rate = defect_rate

    def __iter__(self) -> Iterator[Frame]:
        return self

    def __next__(self) -> Frame:
        return render_frame(self.rng, self.width, self.height, condition=self.condition, defect_rate=self.defect_rate)

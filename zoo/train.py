"""Train the project's vision models on rendered frames and export them to ONNX.

    .venv/bin/pip install -e '.[train]'      # torch, CPU only; never needed at run time
    .venv/bin/python -m zoo.train          # everything (half an hour on a busy 2-core machine)
    .venv/bin/python -m zoo.train parts-classifier cloud-classifier
    .venv/bin/python -m zoo.train benchmark   # only the MobileNetV2 / ResNet-18 networks for bench/

Every image comes from `zoo.render` with fixed seeds, so a run reproduces the
same data; the metrics written into ``zoo/<name>.json`` are measured on the
exported ONNX files with onnxruntime, on renders the training never saw.
Small models land in ``zoo/onnx/`` (committed, listed in SHA256SUMS); the
benchmark networks are too large to commit and land in ``zoo/build/``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from PIL import Image
from torch import nn
from torch.nn import functional as F

from agent.kernel.spec import ClassificationOutput, DetectionOutput, InputSpec, Thresholds
from zoo import evaluate, render

ROOT = Path(__file__).resolve().parent
OUT = ROOT
ONNX_DIR = OUT / "onnx"
BUILD_DIR = OUT / "build"
VERSION = "1.0.0"
LICENCE = "Apache-2.0"

# Per-channel statistics of the rendered training crops (see `channel_stats`), rounded so
# the metadata stays readable. Every model uses the same pair.
MEAN = [0.273, 0.275, 0.264]
STD = [0.188, 0.177, 0.167]

DETECTOR_STRIDE = 16
DETECTOR_ANCHOR = 48.0


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# ---------------------------------------------------------------- data


def crop_set(
    seed: int, count: int, size: int, condition: render.Condition, spread: float = 1.6
) -> tuple[np.ndarray, np.ndarray]:
    """``count`` crops, labels balanced, each rendered at a random size up to ``spread`` x ``size`` and resized.

    Rendering above the input size and resizing is what happens at run time when a
    detector box is cut out of a larger frame.
    """
    rng = np.random.default_rng(seed)
    images = np.empty((count, size, size, 3), dtype=np.uint8)
    labels = np.empty(count, dtype=np.int64)
    for i in range(count):
        label = i % len(render.LABELS)
        drawn = int(rng.integers(size, int(size * spread) + 1))
        image = render.render_crop(rng, drawn, label=render.LABELS[label], condition=condition).image
        if drawn != size:
            image = image.resize((size, size), Image.Resampling.BILINEAR)
        images[i] = np.asarray(image)
        labels[i] = label
    return images, labels


def eval_crops(seed: int, count: int, condition: render.Condition) -> tuple[list[Image.Image], np.ndarray]:
    """Held-out crops at 128 px, fed to each model through its own input spec."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for i in range(count):
        label = i % len(render.LABELS)
        images.append(render.render_crop(rng, 128, label=render.LABELS[label], condition=condition).image)
        labels.append(label)
    return images, np.array(labels)


def frame_set(seed: int, count: int, size: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """Whole frames (a share of them 4:3, stretched to square as the input spec does) with their part boxes."""
    rng = np.random.default_rng(seed)
    images = np.empty((count, size, size, 3), dtype=np.uint8)
    targets = []
    for i in range(count):
        width, height = (size, size) if rng.random() < 0.7 else (int(size * 4 / 3), size)
        frame = render.render_frame(rng, width, height, defect_rate=0.3)
        sx, sy = size / width, size / height
        images[i] = np.asarray(frame.image.resize((size, size), Image.Resampling.BILINEAR))
        rows = [
            (render.PART_KINDS.index(p.kind), p.box[0] * sx, p.box[1] * sy, p.box[2] * sx, p.box[3] * sy)
            for p in frame.parts
        ]
        targets.append(np.array(rows, dtype=np.float32).reshape(-1, 5))
    return images, targets


def channel_stats(seed: int = 7, count: int = 256) -> tuple[list[float], list[float]]:
    images, _ = crop_set(seed, count, 96, "normal")
    pixels = images.reshape(-1, 3).astype(np.float64) / 255.0
    return pixels.mean(axis=0).round(3).tolist(), pixels.std(axis=0).round(3).tolist()


def to_input(batch: torch.Tensor) -> torch.Tensor:
    """uint8 NHWC -> normalised float NCHW, as `InputSpec` with MEAN and STD describes."""
    x = batch.permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return (x - mean) / std


# ---------------------------------------------------------------- networks


def conv_bn(cin: int, cout: int, stride: int = 1, groups: int = 1, act: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(
            cin,
            cout,
            3 if groups == 1 or groups == cin else 1,
            stride,
            1 if groups == 1 or groups == cin else 0,
            groups=groups,
            bias=False,
        ),
        nn.BatchNorm2d(cout),
    ]
    if act:
        layers.append(nn.ReLU6(inplace=True) if groups > 1 else nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class PlainCNN(nn.Module):
    """Stages of 3x3 conv + BN + ReLU, each starting with a stride of 2, then global average and max pooling.

    The max pool matters: a defect is a small mark anywhere on the part, and averaging alone dilutes it.
    """

    def __init__(self, stages: list[tuple[int, int]], classes: int, dropout: float = 0.2) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        for width, depth in stages:
            for i in range(depth):
                layers.append(conv_bn(cin, width, stride=2 if i == 0 else 1))
                cin = width
        self.features = nn.Sequential(*layers)
        self.avg, self.max = nn.AdaptiveAvgPool2d(1), nn.AdaptiveMaxPool2d(1)
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(2 * cin, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(x)
        return self.head(torch.cat([self.avg(h), self.max(h)], dim=1))


class FlipAverage(nn.Module):
    """Averages a classifier's logits over the four flips of its input, inside the exported graph.

    A part on a belt has no up or left, the training saw every flip, and the average is
    about a point more accurate than one look, for four times a very small cost.
    """

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        views = torch.cat([x, x.flip(3), x.flip(2), x.flip(2).flip(3)], dim=0)
        logits = self.net(views)
        return logits.view(4, x.shape[0], logits.shape[1]).mean(dim=0)


class TinyYolo(nn.Module):
    """A single-scale grid detector: one box per cell of a stride-16 grid, one anchor.

    ``forward`` returns raw maps for training; `Decoded` wraps it for export with
    the output `agent.kernel.spec.DetectionOutput` documents.
    """

    def __init__(self, classes: int) -> None:
        super().__init__()
        self.classes = classes
        self.features = nn.Sequential(
            conv_bn(3, 12, 2),
            conv_bn(12, 24, 2),
            conv_bn(24, 40, 2),
            conv_bn(40, 40),
            conv_bn(40, 64, 2),
            conv_bn(64, 64),
            conv_bn(64, 64),
        )
        self.head = nn.Conv2d(64, 5 + classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class Decoded(nn.Module):
    """(batch, 5 + classes, gh, gw) raw maps -> (batch, gh * gw, 5 + classes) rows in input pixels, sigmoid scores."""

    def __init__(self, net: TinyYolo) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raw = self.net(x)
        gh, gw = raw.shape[2], raw.shape[3]
        ys = torch.arange(gh, dtype=raw.dtype).view(1, gh, 1).expand(1, gh, gw)
        xs = torch.arange(gw, dtype=raw.dtype).view(1, 1, gw).expand(1, gh, gw)
        cx = (torch.sigmoid(raw[:, 0]) + xs) * DETECTOR_STRIDE
        cy = (torch.sigmoid(raw[:, 1]) + ys) * DETECTOR_STRIDE
        w = DETECTOR_ANCHOR * torch.exp(raw[:, 2].clamp(max=4.0))
        h = DETECTOR_ANCHOR * torch.exp(raw[:, 3].clamp(max=4.0))
        scores = torch.sigmoid(raw[:, 4:])
        rows = torch.cat([torch.stack([cx, cy, w, h], dim=1), scores], dim=1)
        return rows.flatten(2).transpose(1, 2)


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(inplace=True)]
        layers += [
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return x + out if self.residual else out


class MobileNetV2(nn.Module):
    """MobileNetV2 at width 1.0 (Sandler et al. 2018), as torchvision lays it out."""

    SETTINGS = (
        (1, 16, 1, 1),
        (6, 24, 2, 2),
        (6, 32, 3, 2),
        (6, 64, 4, 2),
        (6, 96, 3, 1),
        (6, 160, 3, 2),
        (6, 320, 1, 1),
    )

    def __init__(self, classes: int) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(3, 32, 3, 2, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU6(inplace=True)]
        cin = 32
        for t, c, n, s in self.SETTINGS:
            for i in range(n):
                layers.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        layers += [nn.Conv2d(cin, 1280, 1, bias=False), nn.BatchNorm2d(1280), nn.ReLU6(inplace=True)]
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(1280, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.down(x))


class ResNet18(nn.Module):
    """ResNet-18 (He et al. 2016), as torchvision lays it out."""

    def __init__(self, classes: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1)
        )
        layers: list[nn.Module] = []
        cin = 64
        for width, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            layers += [BasicBlock(cin, width, stride), BasicBlock(width, width, 1)]
            cin = width
        self.layers = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.layers(self.stem(x)))


# ---------------------------------------------------------------- training


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Flips and quarter turns: a part on a belt has no up or left."""
    if torch.rand(1, generator=generator).item() < 0.5:
        x = x.flip(2)
    if torch.rand(1, generator=generator).item() < 0.5:
        x = x.flip(1)
    if torch.rand(1, generator=generator).item() < 0.5:
        x = x.transpose(1, 2)
    return x


def fit_classifier(
    model: nn.Module, images: np.ndarray, labels: np.ndarray, epochs: int, seed: int, batch: int = 32, lr: float = 2e-3
) -> None:
    generator = torch.Generator().manual_seed(seed)
    x_all, y_all = torch.from_numpy(images), torch.from_numpy(labels)
    steps = epochs * math.ceil(len(images) / batch)
    optimiser = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=lr, total_steps=steps, pct_start=0.2)
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(len(images), generator=generator)
        total, correct, loss_sum = 0, 0, 0.0
        for start in range(0, len(order), batch):
            idx = order[start : start + batch]
            x = to_input(augment(x_all[idx], generator))
            y = y_all[idx]
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
            total += len(idx)
            correct += int((logits.argmax(1) == y).sum())
            loss_sum += float(loss) * len(idx)
        log(f"  epoch {epoch + 1}/{epochs}: loss {loss_sum / total:.3f}, train accuracy {correct / total:.3f}")
    model.eval()


def detector_targets(boxes: list[np.ndarray], grid: int, classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per cell: tx, ty (offset in cell), tw, th (log of size over the anchor), then class; and an objectness map."""
    target = torch.zeros(len(boxes), 5, grid, grid)
    obj = torch.zeros(len(boxes), grid, grid)
    for b, rows in enumerate(boxes):
        for label, x0, y0, x1, y1 in rows:
            cx, cy, w, h = (x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0
            gx = min(grid - 1, int(cx / DETECTOR_STRIDE))
            gy = min(grid - 1, int(cy / DETECTOR_STRIDE))
            target[b, :, gy, gx] = torch.tensor(
                [
                    cx / DETECTOR_STRIDE - gx,
                    cy / DETECTOR_STRIDE - gy,
                    math.log(max(w, 1.0) / DETECTOR_ANCHOR),
                    math.log(max(h, 1.0) / DETECTOR_ANCHOR),
                    float(label),
                ]
            )
            obj[b, gy, gx] = 1.0
    return target, obj


def flip_boxes(rows: np.ndarray, size: int, horizontal: bool, vertical: bool, transpose: bool) -> np.ndarray:
    rows = rows.copy()
    if horizontal:
        rows[:, [1, 3]] = size - rows[:, [3, 1]]
    if vertical:
        rows[:, [2, 4]] = size - rows[:, [4, 2]]
    if transpose:
        rows[:, [1, 2, 3, 4]] = rows[:, [2, 1, 4, 3]]
    return rows


def fit_detector(
    model: TinyYolo,
    images: np.ndarray,
    boxes: list[np.ndarray],
    epochs: int,
    seed: int,
    batch: int = 16,
    lr: float = 2e-3,
) -> None:
    generator = torch.Generator().manual_seed(seed)
    size = images.shape[1]
    grid = size // DETECTOR_STRIDE
    x_all = torch.from_numpy(images)
    steps = epochs * math.ceil(len(images) / batch)
    optimiser = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=lr, total_steps=steps, pct_start=0.2)
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(len(images), generator=generator)
        loss_sum, count = 0.0, 0
        for start in range(0, len(order), batch):
            idx = order[start : start + batch]
            flips = [bool(torch.rand(1, generator=generator).item() < 0.5) for _ in range(3)]
            x = x_all[idx]
            if flips[0]:
                x = x.flip(2)
            if flips[1]:
                x = x.flip(1)
            if flips[2]:
                x = x.transpose(1, 2)
            target, obj = detector_targets([flip_boxes(boxes[int(i)], size, *flips) for i in idx], grid, model.classes)
            raw = model(to_input(x))
            positive = obj > 0
            obj_loss = F.binary_cross_entropy_with_logits(raw[:, 4], obj, pos_weight=torch.tensor(4.0))
            xy_pred = torch.sigmoid(raw[:, 0:2]).permute(0, 2, 3, 1)[positive]
            wh_pred = raw[:, 2:4].permute(0, 2, 3, 1)[positive]
            t = target.permute(0, 2, 3, 1)[positive]
            box_loss = F.mse_loss(xy_pred, t[:, 0:2]) * 4 + F.mse_loss(wh_pred, t[:, 2:4]) * 2
            cls_pred = raw[:, 5:].permute(0, 2, 3, 1)[positive]
            cls_target = F.one_hot(t[:, 4].long(), model.classes).float()
            cls_loss = F.binary_cross_entropy_with_logits(cls_pred, cls_target)
            loss = obj_loss * 4 + box_loss + cls_loss
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
            loss_sum += float(loss) * len(idx)
            count += len(idx)
        log(f"  epoch {epoch + 1}/{epochs}: loss {loss_sum / count:.3f}")
    model.eval()


# ---------------------------------------------------------------- export and measurement


def export(model: nn.Module, path: Path, size: int, output: str, dynamic_batch: bool = True) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    dummy = torch.zeros(1, 3, size, size)
    axes = {"image": {0: "batch"}, output: {0: "batch"}} if dynamic_batch else None
    model.eval()
    with torch.no_grad():
        torch.onnx.export(
            model,
            (dummy,),
            str(path),
            opset_version=17,
            dynamo=False,
            input_names=["image"],
            output_names=[output],
            dynamic_axes=axes,
            do_constant_folding=True,
        )


def session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_onnx(sess: ort.InferenceSession, batch: np.ndarray, chunk: int = 64) -> np.ndarray:
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: batch[i : i + chunk]})[0] for i in range(0, len(batch), chunk)])


def torch_agreement(model: nn.Module, sess: ort.InferenceSession, batch: np.ndarray) -> float:
    """Largest absolute difference between torch and onnxruntime outputs on the same inputs."""
    with torch.no_grad():
        expected = model(torch.from_numpy(batch)).numpy()
    return float(np.abs(run_onnx(sess, batch) - expected).max())


def classification_metrics(
    sess: ort.InferenceSession,
    spec: InputSpec,
    images: list[Image.Image],
    labels: np.ndarray,
    thresholds: Thresholds,
    suffix: str,
) -> dict[str, float]:
    """Accuracy (overall and per label), mean top-1 confidence and escalation rate, keyed ``<metric>_<suffix>``."""
    probs = evaluate.softmax(run_onnx(sess, evaluate.preprocess(images, spec)))
    predicted = probs.argmax(1)
    confidence = probs.max(1)
    return {
        f"accuracy_{suffix}": round(float((predicted == labels).mean()), 4),
        f"mean_confidence_{suffix}": round(float(confidence.mean()), 4),
        f"escalation_rate_{suffix}": round(float((confidence < thresholds.escalate_below).mean()), 4),
        **{
            f"accuracy_{name}_{suffix}": round(float((predicted[labels == i] == i).mean()), 4)
            for i, name in enumerate(render.LABELS)
        },
    }


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_metadata(name: str, document: dict[str, Any], source: str) -> None:
    """``zoo/<name>.json``: exactly the registry's publish metadata (registry/metadata.py), so CI publishes it
    as it is; the agent reads the same file next to ``zoo/onnx/<name>.onnx``."""
    document = {
        "version": VERSION,
        **document,
        "provenance": {"source": f"{source}; licence {LICENCE}, rendered data, no third-party weights"},
    }
    (OUT / f"{name}.json").write_text(json.dumps(document, indent=2) + "\n")


def write_checksums() -> None:
    lines = [f"{sha256(p)}  {p.name}\n" for p in sorted(ONNX_DIR.glob("*.onnx"))]
    (ONNX_DIR / "SHA256SUMS").write_text("".join(lines))


# ---------------------------------------------------------------- the models


class Plan:
    """Sizes of one run; `--quick` shrinks everything to check the pipeline in a minute."""

    def __init__(self, quick: bool) -> None:
        self.scale = 0.05 if quick else 1.0
        self.epoch_scale = 0.2 if quick else 1.0

    def n(self, count: int) -> int:
        return max(16, int(count * self.scale))

    def epochs(self, count: int) -> int:
        return max(2, round(count * self.epoch_scale))


_EVAL: dict[str, tuple[list[Image.Image], np.ndarray]] = {}


def held_out(plan: Plan, condition: render.Condition) -> tuple[list[Image.Image], np.ndarray]:
    if condition not in _EVAL:
        _EVAL[condition] = eval_crops({"normal": 90_001, "dark": 90_002}[condition], plan.n(800), condition)
    return _EVAL[condition]


def train_classifier(
    name: str,
    plan: Plan,
    *,
    size: int,
    stages: list[tuple[int, int]],
    train_count: int,
    epochs: int,
    condition: render.Condition,
    seed: int,
    role: str,
    description: str,
) -> None:
    started = time.monotonic()
    log(f"{name}: rendering {plan.n(train_count)} crops ({condition} lighting)")
    images, labels = crop_set(seed, plan.n(train_count), size, condition)
    torch.manual_seed(seed)
    model = PlainCNN(stages, len(render.LABELS))
    log(f"{name}: training {sum(p.numel() for p in model.parameters())} parameters at {size}x{size}")
    fit_classifier(model, images, labels, plan.epochs(epochs), seed)
    model = FlipAverage(model).eval()
    path = ONNX_DIR / f"{name}.onnx"
    export(model, path, size, "logits")
    sess = session(path)
    spec = InputSpec(name="image", shape=[None, 3, size, size], mean=MEAN, std=STD)
    thresholds = Thresholds(escalate_below=0.6, act_above=0.8)
    normal, dark = held_out(plan, "normal"), held_out(plan, "dark")
    metrics: dict[str, float] = {
        **classification_metrics(sess, spec, *normal, thresholds, "normal"),
        **classification_metrics(sess, spec, *dark, thresholds, "dark"),
        "held_out_images": len(normal[0]) + len(dark[0]),
        "onnx_vs_torch_max_abs_diff": torch_agreement(model, sess, evaluate.preprocess(normal[0][:64], spec)),
        "train_images": len(images),
        "train_epochs": plan.epochs(epochs),
        "train_seconds": round(time.monotonic() - started),
    }
    log(f"{name}: {json.dumps(metrics)}")
    write_metadata(
        name,
        {
            "task": "classification",
            "role": role,
            "description": description,
            "labels": list(render.LABELS),
            "input": spec.model_dump(mode="json"),
            "output": ClassificationOutput(output="logits", softmax=True, top_k=len(render.LABELS)).model_dump(),
            "thresholds": thresholds.model_dump(),
            "metrics": metrics,
        },
        source=f"python -m zoo.train {name}: {len(images)} crops, zoo/render.py, {condition} light, seed {seed}",
    )


def train_parts_classifier(plan: Plan) -> None:
    train_classifier(
        "parts-classifier",
        plan,
        size=96,
        stages=[(16, 1), (32, 1), (64, 2), (128, 2)],
        train_count=6000,
        epochs=14,
        condition="normal",
        seed=1,
        role="edge",
        description="Edge classifier of a part crop (a detector box enlarged by 1.3): ok, crack, missing hole, "
        "scratch. Trained on normal line lighting only, so its confidence falls on dark frames.",
    )


def train_cloud_classifier(plan: Plan) -> None:
    train_classifier(
        "cloud-classifier",
        plan,
        size=128,
        stages=[(16, 1), (32, 2), (64, 2), (128, 2)],
        train_count=6000,
        epochs=12,
        condition="wide",
        seed=2,
        role="cloud",
        description="Cloud classifier for escalated crops: same labels as parts-classifier, higher resolution, "
        "more capacity, trained on a wide range of lighting including dark frames.",
    )


def train_parts_detector(plan: Plan) -> None:
    name, size, seed = "parts-detector", 256, 3
    started = time.monotonic()
    log(f"{name}: rendering {plan.n(2400)} frames")
    images, boxes = frame_set(seed, plan.n(2400), size)
    torch.manual_seed(seed)
    model = TinyYolo(len(render.PART_KINDS))
    log(f"{name}: training {sum(p.numel() for p in model.parameters())} parameters at {size}x{size}")
    fit_detector(model, images, boxes, plan.epochs(10), seed)
    decoded = Decoded(model).eval()
    path = ONNX_DIR / f"{name}.onnx"
    export(decoded, path, size, "detections")
    sess = session(path)
    spec = InputSpec(name="image", shape=[None, 3, size, size], mean=MEAN, std=STD)
    output = DetectionOutput(output="detections", iou_threshold=0.45, score_threshold=0.25, max_detections=20)
    test_images, test_boxes = frame_set(90_003, plan.n(300), size)
    batch = evaluate.preprocess([Image.fromarray(a) for a in test_images], spec)
    rows = run_onnx(sess, batch)
    truths = [[(int(r[0]), (float(r[1]), float(r[2]), float(r[3]), float(r[4]))) for r in b] for b in test_boxes]
    ranked = [evaluate.decode_yolo(r, 0.01, output.iou_threshold, output.max_detections) for r in rows]
    kept = [evaluate.decode_yolo(r, output.score_threshold, output.iou_threshold, output.max_detections) for r in rows]
    at_threshold = evaluate.average_precision(kept, truths, len(render.PART_KINDS))
    metrics = {
        "held_out_frames": len(test_images),
        "held_out_parts": sum(len(t) for t in truths),
        "map50": round(evaluate.average_precision(ranked, truths, len(render.PART_KINDS))["map50"], 4),
        "precision_at_score_threshold": round(at_threshold["precision"], 4),
        "recall_at_score_threshold": round(at_threshold["recall"], 4),
        "onnx_vs_torch_max_abs_diff": torch_agreement(decoded, sess, batch[:32]),
        "train_images": len(images),
        "train_epochs": plan.epochs(10),
        "train_seconds": round(time.monotonic() - started),
    }
    log(f"{name}: {json.dumps(metrics)}")
    write_metadata(
        name,
        {
            "task": "detection",
            "role": "edge",
            "description": "Tiny single-scale grid detector (stride 16, one anchor) finding washers, gears and "
            "brackets on the line in a whole frame; crops of its boxes feed parts-classifier.",
            "labels": list(render.PART_KINDS),
            "input": spec.model_dump(mode="json"),
            "output": output.model_dump(),
            "thresholds": Thresholds(escalate_below=0.4, act_above=0.6).model_dump(),
            "metrics": metrics,
            # Rows are in input pixels (0-256), so allow a hundredth of a pixel between runtimes.
            "tolerance": {"atol": 0.01, "rtol": 0.001},
        },
        source=f"python -m zoo.train {name}: {len(images)} frames from zoo/render.py, seed {seed}",
    )


def train_benchmark_networks(plan: Plan) -> None:
    """MobileNetV2 and ResNet-18, briefly trained at 64 px and exported at 1x3x224x224 for bench/."""
    size = 64
    images, labels = crop_set(4, plan.n(2000), size, "normal")
    normal = held_out(plan, "normal")
    report: dict[str, Any] = {}
    networks: dict[str, Callable[[], nn.Module]] = {
        "mobilenetv2": lambda: MobileNetV2(len(render.LABELS)),
        "resnet18": lambda: ResNet18(len(render.LABELS)),
    }
    for name, build in networks.items():
        started = time.monotonic()
        torch.manual_seed(4)
        model = build()
        log(f"{name}: training {sum(p.numel() for p in model.parameters())} parameters at {size}x{size}")
        fit_classifier(model, images, labels, plan.epochs(3), 4, lr=2e-3)
        path = BUILD_DIR / f"{name}-224.onnx"
        export(model, path, 224, "logits", dynamic_batch=False)
        sess = session(path)
        found: dict[str, Any] = {
            "file": str(path.relative_to(OUT)),
            "size": path.stat().st_size,
            "sha256": sha256(path),
            "seconds": round(time.monotonic() - started),
        }
        for res in (size, 224):
            spec = InputSpec(name="image", shape=[1, 3, res, res], mean=MEAN, std=STD)
            batch = evaluate.preprocess(normal[0], spec)
            with torch.no_grad():
                logits = torch.cat([model(torch.from_numpy(batch[i : i + 64])) for i in range(0, len(batch), 64)])
            found[f"accuracy_at_{res}"] = round(float((logits.argmax(1).numpy() == normal[1]).mean()), 4)
        one = evaluate.preprocess(normal[0][:1], InputSpec(name="image", shape=[1, 3, 224, 224], mean=MEAN, std=STD))
        found["onnx_vs_torch_max_abs_diff"] = torch_agreement(model, sess, one)
        log(f"{name}: {json.dumps(found)}")
        report[name] = found
    (BUILD_DIR / "benchmark.json").write_text(json.dumps(report, indent=2) + "\n")


TARGETS: dict[str, Callable[[Plan], None]] = {
    "parts-classifier": train_parts_classifier,
    "parts-detector": train_parts_detector,
    "cloud-classifier": train_cloud_classifier,
    "benchmark": train_benchmark_networks,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("targets", nargs="*", help=f"what to build: {', '.join(TARGETS)} (default: everything)")
    parser.add_argument("--quick", action="store_true", help="tiny data and epochs: checks the pipeline only")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT, help="where to write onnx/, build/ and the metadata")
    args = parser.parse_args(argv)
    unknown = [t for t in args.targets if t not in TARGETS]
    if unknown:
        parser.error(f"unknown target(s) {', '.join(unknown)}; choose from {', '.join(TARGETS)}")
    global OUT, ONNX_DIR, BUILD_DIR
    OUT = args.out.resolve()
    ONNX_DIR, BUILD_DIR = OUT / "onnx", OUT / "build"
    torch.set_num_threads(args.threads)
    plan = Plan(args.quick)
    for target in args.targets or list(TARGETS):
        TARGETS[target](plan)
    if ONNX_DIR.exists():
        write_checksums()
    return 0


if __name__ == "__main__":
    sys.exit(main())

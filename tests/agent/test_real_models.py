"""The project's own models, fed by the agent's pipeline, on frames from the project's renderer."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

import zoo
from agent.inference import ModelSession, SessionHolder
from agent.kernel import protocol
from agent.pipeline import Pipeline, run_over

render = pytest.importorskip("zoo.render", reason="the frame renderer (numpy + Pillow)")


def model(name: str) -> ModelSession:
    meta = zoo.metadata_path(name)
    if not meta.exists():
        pytest.skip(f"models/{name}.json is not built (make models)")
    return ModelSession.from_metadata(meta)


def bgr(image: object) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(image)[:, :, ::-1])


def iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - ix * iy
    return ix * iy / union if union > 0 else 0.0


def test_the_parts_classifier_labels_rendered_parts_through_an_image_folder(tmp_path: Path) -> None:
    classifier = model("parts-classifier")
    rng = np.random.default_rng(2024)
    truth = {}
    for i in range(48):
        label = render.LABELS[i % len(render.LABELS)]
        crop = render.render_crop(rng, 96, label=label, condition="normal")
        cv2.imwrite(str(tmp_path / f"{i:03d}.png"), bgr(crop.image))
        truth[f"{i:03d}.png"] = label

    results = [(frame.name, result) for frame, result in run_over(classifier, str(tmp_path))]

    assert len(results) == 48
    correct = sum(result.label == truth[name] for name, result in results)
    assert correct / len(results) >= 0.85, [(n, r.label, truth[n]) for n, r in results if r.label != truth[n]]
    assert all(result.model_name == "parts-classifier" and 0 < result.confidence <= 1 for _, result in results)


def test_the_parts_detector_finds_rendered_parts_in_frame_pixels() -> None:
    detector = model("parts-detector")
    rng = np.random.default_rng(7)
    found = total = 0
    for _ in range(12):
        # A 4:3 camera frame, so the boxes must come back through the resize to frame pixels.
        frame = render.render_frame(rng, 320, 240, condition="normal")
        result = detector.infer(bgr(frame.image))
        for part in frame.parts:
            total += 1
            found += any(d.label == part.kind and iou(d.box, part.box) >= 0.5 for d in result.detections)

    assert total > 0
    assert found / total >= 0.8


def test_a_real_model_runs_in_the_threaded_pipeline_and_its_window_validates() -> None:
    classifier = model("parts-classifier")
    rng = np.random.default_rng(5)
    images = [bgr(render.render_crop(rng, 96, condition="normal").image) for _ in range(20)]

    class Source:
        name, live = "rendered", False

        def __init__(self) -> None:
            self._left = list(images)

        def read(self) -> tuple[np.ndarray, str] | None:
            return (self._left.pop(0), "crop") if self._left else None

        def close(self) -> None:
            pass

    pipeline = Pipeline(Source(), SessionHolder(classifier), lossless=True).start()
    assert pipeline.wait(60)
    pipeline.stop()

    window = protocol.Window.model_validate(pipeline.take_window())
    assert window.frames == 20 and window.model_name == "parts-classifier"
    assert sum(window.classes.values()) == 20
    assert set(window.classes) <= set(render.LABELS)

"""The pipeline end to end: decisions, model swaps between frames, window telemetry, offline runs."""

from __future__ import annotations

import json
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from unittest import mock

import cv2
import numpy as np
import pytest

from agent.capture import CaptureError
from agent.desired import DesiredState
from agent.inference import ModelSession, SessionHolder
from agent.kernel import histogram, protocol
from agent.kernel.decode import Result
from agent.pipeline import Pipeline, PipelineComponent, main, run_over
from agent.window import MAX_CLASSES, OTHER, WindowAggregator
from tests.agent.conftest import BLUE, GREEN, RED, ListSource, solid
from tests.agent.helpers import desired_doc


def test_the_pipeline_decides_every_frame_with_the_model_in_service(colour_model: ModelSession) -> None:
    results: list[Result] = []
    source = ListSource([solid(RED), solid(GREEN), solid(BLUE), solid(RED)])
    pipeline = Pipeline(source, SessionHolder(colour_model), lossless=True, on_result=lambda f, r: results.append(r))

    pipeline.start()
    assert pipeline.wait(10)
    pipeline.stop()

    assert [r.label for r in results] == ["red", "green", "blue", "red"]
    assert [r.frame_index for r in results] == [1, 2, 3, 4]
    assert all(r.confidence > 0.99 and r.model_version == "1.0.0" for r in results)
    assert pipeline.counters() | {"actions": None} == {
        "read": 4,
        "captured": 4,
        "skipped": 0,
        "dropped": 0,
        "inferred": 4,
        "errors": 0,
        "escalated": 0,
        "swaps": 0,
        "fallback": False,
        "actions": None,
    }


class Recording:
    """A fake model that records the frames it decided; it can hold one frame until released."""

    def __init__(self, name: str, hold_frame: int | None = None) -> None:
        self.name, self.version = name, "1.0.0"
        self.seen: list[int] = []
        self.holding = threading.Event()
        self.release = threading.Event()
        self._hold = hold_frame

    def infer(self, image: np.ndarray) -> Result:
        marker = int(image[0, 0, 0])
        self.seen.append(marker)
        if marker == self._hold:
            self.holding.set()
            assert self.release.wait(10)
        return Result(label=self.name, confidence=0.9, model_name=self.name, model_version=self.version)


def test_a_swap_lands_between_frames_and_loses_none() -> None:
    old, new = Recording("old", hold_frame=3), Recording("new")
    holder = SessionHolder(old)
    labels: list[str | None] = []
    images = [np.full((2, 2, 3), i, dtype=np.uint8) for i in range(8)]
    pipeline = Pipeline(ListSource(images), holder, lossless=True, on_result=lambda f, r: labels.append(r.label))
    pipeline.start()

    assert old.holding.wait(10)  # frame 3 is in flight on the old model
    returned = holder.swap(new)  # does not wait for that frame
    old.release.set()
    assert pipeline.wait(10)
    pipeline.stop()

    assert returned is old
    assert old.seen == [0, 1, 2, 3]  # the frame in flight finished on the old model
    assert new.seen == [4, 5, 6, 7]  # every later frame on the new one
    assert labels == ["old"] * 4 + ["new"] * 4
    assert pipeline.counters()["swaps"] == 1


def test_a_model_failing_on_a_frame_costs_that_frame_only() -> None:
    class Flaky(Recording):
        def infer(self, image: np.ndarray) -> Result:
            if int(image[0, 0, 0]) == 1:
                raise RuntimeError("onnxruntime fell over")
            return super().infer(image)

    images = [np.full((2, 2, 3), i, dtype=np.uint8) for i in range(3)]
    pipeline = Pipeline(ListSource(images), SessionHolder(Flaky("m")), lossless=True).start()
    assert pipeline.wait(10)
    pipeline.stop()

    window = pipeline.take_window()
    assert (pipeline.inferred, pipeline.errors, pipeline.consecutive_errors) == (2, 1, 0)
    assert (window["frames"], window["errors"]) == (2, 1)


def test_the_closed_window_is_a_valid_protocol_window(colour_model: ModelSession) -> None:
    source = ListSource([solid(RED)] * 3 + [solid(BLUE)])
    pipeline = Pipeline(source, SessionHolder(colour_model), lossless=True).start()
    assert pipeline.wait(10)
    pipeline.stop()

    data = pipeline.take_window()

    record = protocol.TelemetryRecord(seq=1, kind="window", ts=protocol.utcnow(), data=data)
    window = protocol.window_of(record)
    assert (window.frames, window.model_name, window.model_version, window.fallback) == (4, "colour", "1.0.0", False)
    assert window.classes == {"red": 3, "blue": 1}
    assert window.latency().total == 4
    assert sum(window.confidence) == 4 and window.confidence[-1] == 4
    # The next window starts where this one ended, empty.
    following = pipeline.take_window()
    assert following["start"] == data["end"] and following["frames"] == 0


def test_a_window_folds_rare_classes_once_the_protocol_bound_is_reached() -> None:
    window = WindowAggregator()
    for i in range(MAX_CLASSES + 5):
        window.add(Result(label=f"c{i}", confidence=0.5, latency_ms=1.0))

    data = window.close(datetime.now(timezone.utc))

    protocol.Window.model_validate(data)
    assert len(data["classes"]) == MAX_CLASSES
    assert data["classes"][OTHER] == 6
    assert histogram.LatencyHistogram.from_wire(data["latency_ms"]).total == MAX_CLASSES + 5


def test_the_component_puts_windows_into_the_runtime_outbox(tmp_path: Path, colour_model: ModelSession) -> None:
    from agent.outbox import Outbox

    class Runtime:
        def __init__(self) -> None:
            self.outbox = Outbox(tmp_path / "outbox.db")
            self.desired_state = mock.create_autospec(DesiredState, instance=True)
            self.model_version: str | None = None

    runtime = Runtime()
    pipeline = Pipeline(ListSource([solid(GREEN)] * 5), SessionHolder(colour_model), lossless=True)
    component = PipelineComponent(pipeline, interval_s=3600)

    component.start(runtime)
    assert pipeline.wait(10)
    component.stop()  # writes the last, partial window
    runtime.outbox.commit()

    batch = runtime.outbox.next_batch()
    runtime.outbox.close()
    assert batch is not None
    records = batch.message.records
    assert [r.kind for r in records] == ["window"]
    assert protocol.window_of(records[0]).classes == {"green": 5}
    runtime.desired_state.subscribe.assert_called_once_with(component.apply_desired)
    assert runtime.model_version == "1.0.0"


def test_run_over_and_the_command_line_decide_every_image_of_a_folder(
    tmp_path: Path, colour_model: ModelSession, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, colour in enumerate((BLUE, RED, GREEN)):
        cv2.imwrite(str(folder / f"{i}.png"), solid(colour))

    assert [r.label for _, r in run_over(colour_model, str(folder))] == ["blue", "red", "green"]

    meta = tmp_path / "colour.json"
    meta.write_text(
        json.dumps(
            {
                "name": "colour",
                "version": "1.0.0",
                "file": "colour.onnx",
                "labels": ["red", "green", "blue"],
                "input": colour_model.input_spec.model_dump(mode="json"),
                "output": colour_model.output.model_dump(),
            }
        )
    )
    assert main([str(meta), str(folder)]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(line["frame"], line["label"]) for line in lines] == [
        ("0.png", "blue"),
        ("1.png", "red"),
        ("2.png", "green"),
    ]


def test_the_command_line_names_a_bad_model_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "m.json").write_text("{}")
    assert main([str(tmp_path / "m.json"), str(tmp_path)]) == 1
    assert "not usable model metadata" in capsys.readouterr().err


def test_the_component_is_built_from_config_sections_and_follows_the_desired_threshold(
    tmp_path: Path, colour_model: ModelSession, agent_config_factory: Any
) -> None:
    folder = tmp_path / "frames"
    folder.mkdir()
    cv2.imwrite(str(folder / "a.png"), solid(RED))
    config = agent_config_factory(
        server_url="https://cloud.example",
        capture={"source": str(folder), "max_fps": 5, "every_nth": 2, "loop": True},
        actions={"rules": [{"kind": "webhook", "url": "http://127.0.0.1:9/"}]},
        vision={"window_interval_s": 60},
    )
    holder = SessionHolder(colour_model)
    component = PipelineComponent.build(config, holder)
    pipeline = component.pipeline
    assert pipeline.holder is holder and component.interval_s == 60
    assert pipeline.capture.every_nth == 2 and pipeline.capture.max_fps == 5
    assert pipeline.actions is not None and len(pipeline.actions.actions) == 1
    escalation = pipeline.escalation
    assert escalation is not None and (config.data_dir / "escalations").is_dir()

    component.apply_desired(desired_doc(2, config={"escalation_threshold": 0.9}))
    assert escalation.threshold(0.6) == 0.9
    component.apply_desired(desired_doc(3, config={"telemetry_interval_s": 5}))
    assert component.interval_s == 5
    component.apply_desired(desired_doc(4, config={}))
    assert component.interval_s == 60.0, "absent, the interval it was built with applies again"
    assert escalation.threshold(0.6) == 0.6


def test_without_a_capture_source_there_is_no_pipeline_to_build(
    colour_model: ModelSession, agent_config_factory: Any
) -> None:
    config = agent_config_factory()
    with pytest.raises(CaptureError, match=r"no \[capture\] source"):
        PipelineComponent.build(config, SessionHolder(colour_model))


def test_the_component_takes_the_clouds_answers_when_it_escalates(tmp_path: Path, colour_model: ModelSession) -> None:
    from agent.config import EscalationSettings
    from agent.escalation import EscalationClient
    from agent.outbox import Outbox

    class Runtime:
        def __init__(self) -> None:
            self.outbox = Outbox(tmp_path / "outbox.db")
            self.desired_state = mock.create_autospec(DesiredState, instance=True)
            self.model_version: str | None = None
            self.commands: dict[str, Any] = {}
            self.events: list[tuple[str, dict[str, Any]]] = []

        def register_command(self, name: str, handler: Any) -> None:
            self.commands[name] = handler

        def event(self, kind: str, **data: Any) -> None:
            self.events.append((kind, data))

        def on_reconnect(self, callback: Any) -> None:
            self.reconnect = callback

        def hold_backlog_while(self, pending: Any) -> None:
            self.hold = pending

    runtime = Runtime()
    escalation = EscalationClient(
        EscalationSettings(), server_url="http://127.0.0.1:9", device_id="dev-1", secret="s", queue_dir=tmp_path / "q"
    )
    pipeline = Pipeline(ListSource([solid(GREEN)]), SessionHolder(colour_model), lossless=True, escalation=escalation)
    component = PipelineComponent(pipeline, interval_s=3600)
    component.start(runtime)
    try:
        args = {
            "frame": "f1",
            "escalation": 7,
            "label": "green",
            "confidence": 0.99,
            "model_name": "colours-cloud",
            "model_version": "2.0.0",
            "edge_label": "green",
            "answered_at": "2026-12-05T07:00:00+00:00",
        }
        runtime.commands["escalation_result"](protocol.Command(id="c-1", name="escalation_result", args=args))
    finally:
        component.stop()
        runtime.outbox.close()
    # After an outage the uploader is woken, and the telemetry backlog waits while frames do.
    assert runtime.reconnect == escalation.wake and runtime.hold() is False
    assert runtime.events == [
        (
            "escalation_answered",
            {
                "command_id": "c-1",
                "frame": "f1",
                "escalation": 7,
                "edge_label": "green",
                "cloud_label": "green",
                "cloud_confidence": 0.99,
                "agrees": True,
            },
        )
    ]

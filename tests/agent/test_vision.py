"""Inference wired into ``run``: windows reach the outbox, and a full outbox never stops inference."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent.config import AgentConfig
from agent.outbox import Outbox
from agent.updater import Updater
from agent.vision import Vision
from registry.bundles import Signer
from tests.agent.conftest import RecordingRuntime, sign, trusted
from tests.agent.helpers import desired_doc


class OutboxRuntime(RecordingRuntime):
    def __init__(self, config: AgentConfig, outbox: Outbox) -> None:
        super().__init__(config)
        self.outbox = outbox


@pytest.fixture
def frames(tmp_path: Path) -> Path:
    import cv2

    folder = tmp_path / "frames"
    folder.mkdir()
    for index, value in enumerate((20, 120, 230)):
        cv2.imwrite(str(folder / f"{index}.png"), np.full((48, 64, 3), value, dtype=np.uint8))
    return folder


def wait(predicate: Any, timeout: float = 20) -> bool:
    done = threading.Event()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not predicate():
        done.wait(0.02)
    return bool(predicate())


def test_with_the_outbox_full_records_are_dropped_and_counted_while_inference_goes_on(
    tmp_path: Path, frames: Path, agent_config_factory: Any
) -> None:
    config = agent_config_factory(
        capture={"source": str(frames), "loop": True, "max_fps": 500},
        vision={"window_interval_s": 0.1},
        escalation={"enabled": False},
    )
    box = Outbox(tmp_path / "outbox.db", max_bytes=64 * 1024, commit_interval_s=0.01)
    runtime = OutboxRuntime(config, box)
    updater = Updater(config)
    vision = Vision(config, updater)
    updater.start(runtime)
    vision.start(runtime)
    try:
        pipeline = vision.pipeline
        assert pipeline is not None and updater.holder.fallback
        # Nothing is acknowledged (no link): fill the outbox far past its cap.
        for _ in range(400):
            box.append(
                "window",
                {"start": "2026-01-01T00:00:00Z", "end": "2026-01-01T00:01:00Z", "frames": 0, "pad": "x" * 1000},
            )
        box.commit()
        assert wait(lambda: box.stats().dropped_total > 0)
        inferred = pipeline.inferred
        dropped = box.stats().dropped_total
        assert wait(lambda: pipeline.inferred > inferred + 50), "inference stopped with the outbox full"
        assert wait(lambda: box.stats().dropped_total > dropped), "windows keep coming, the oldest keep going"
        assert box.stats().bytes <= 64 * 1024
        assert pipeline.errors == 0
    finally:
        vision.stop()
        updater.stop()
        box.close()


def test_without_a_capture_source_the_agent_runs_no_inference(tmp_path: Path, agent_config_factory: Any) -> None:
    config = agent_config_factory()
    box = Outbox(tmp_path / "outbox.db")
    updater = Updater(config)
    vision = Vision(config, updater)
    vision.start(OutboxRuntime(config, box))
    assert vision.pipeline is None
    vision.stop()
    box.close()


def test_a_source_that_cannot_be_opened_is_reported_and_the_agent_goes_on(
    tmp_path: Path, agent_config_factory: Any
) -> None:
    config = agent_config_factory(capture={"source": str(tmp_path / "nowhere")})
    box = Outbox(tmp_path / "outbox.db")
    runtime = OutboxRuntime(config, box)
    vision = Vision(config, Updater(config))
    vision.start(runtime)
    assert vision.pipeline is None
    assert runtime.events[0][0] == "capture_unavailable"
    box.close()


def test_runtime_config_comes_from_verified_documents_only(
    tmp_path: Path, frames: Path, signer: Signer, agent_config_factory: Any
) -> None:
    config = agent_config_factory(
        trust=[trusted(signer)],
        capture={"source": str(frames), "loop": True},
        escalation={"enabled": False},
    )
    box = Outbox(tmp_path / "outbox.db")
    runtime = OutboxRuntime(config, box)
    updater = Updater(config)
    vision = Vision(config, updater)
    vision.start(runtime)
    try:
        component = vision._component
        assert component is not None and component.interval_s == 60

        forged = desired_doc(1, config={"telemetry_interval_s": 5})
        assert not runtime.desired_state.offer(forged)
        assert component.interval_s == 60
        assert runtime.desired_state.offer(sign(forged, signer))
        assert component.interval_s == 5
    finally:
        vision.stop()
        box.close()

"""Shadowing: a candidate decides the same frames as the model in service, within a time budget, never acting."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import pytest

from agent import pipeline as pipeline_module
from agent.capture import Frame
from agent.inference import SessionHolder
from agent.kernel import protocol
from agent.kernel.decode import Result
from agent.pipeline import Pipeline
from tests.agent.conftest import ListSource


class Scripted:
    """A fake model: ``decide(frame index)`` gives its label; ``cost_s`` of work per frame."""

    def __init__(self, name: str, decide: Callable[[int], str], *, cost_s: float = 0.0, version: str = "1.0.0") -> None:
        self.name, self.version = name, version
        self.decide = decide
        self.cost_s = cost_s
        self.calls = 0

    def infer(self, image: np.ndarray) -> Result:
        self.calls += 1
        if self.cost_s:
            time.sleep(self.cost_s)  # stands for the model's compute
        label = self.decide(int(image[0, 0, 0]))
        return Result(label=label, confidence=0.75, model_name=self.name, model_version=self.version)


def frames(count: int) -> list[Frame]:
    return [Frame(np.full((2, 2, 3), i % 256, dtype=np.uint8), i, time.time(), f"f{i}") for i in range(count)]


def pipeline(holder: SessionHolder, **options: float) -> Pipeline:
    return Pipeline(ListSource([]), holder, lossless=True, **options)


def shadow_of(window: dict[str, object]) -> protocol.ShadowSummary:
    parsed = protocol.Window.model_validate(window)
    assert parsed.shadow is not None
    return parsed.shadow


def test_the_candidate_decides_the_same_frames_and_its_agreement_is_counted_but_never_acted_on() -> None:
    # The serving model costs a millisecond, the candidate nothing, and the budget is ample:
    # every frame is shadowed whatever else the machine is doing.
    active = Scripted("parts", lambda i: "ok", cost_s=0.001)
    candidate = Scripted("parts", lambda i: "ok" if i % 2 == 0 else "dent", version="1.1.0")
    holder = SessionHolder(active)
    holder.set_shadow(candidate)
    run = pipeline(holder, shadow_budget=1000.0)
    decided = [run.process(frame) for frame in frames(20)]

    assert all(result is not None and result.label == "ok" for result in decided), "only the active model acts"
    window = run.take_window()
    assert window["frames"] == 20 and window["classes"] == {"ok": 20}
    shadow = shadow_of(window)
    assert (shadow.frames, shadow.compared, shadow.agreed, shadow.errors) == (20, 20, 10, 0)
    assert shadow.model_version == "1.1.0" and sum(shadow.confidence) == 20


def test_a_costly_candidate_is_held_to_its_share_of_the_serving_models_time() -> None:
    active = Scripted("parts", lambda i: "ok", cost_s=0.001)
    candidate = Scripted("parts", lambda i: "ok", cost_s=0.004, version="1.1.0")
    holder = SessionHolder(active)
    holder.set_shadow(candidate)
    run = pipeline(holder, shadow_budget=0.25)
    for frame in frames(200):
        run.process(frame)

    shadow = shadow_of(run.take_window())
    assert 0 < shadow.frames < 200
    # The budget's invariant, whatever the machine's speed: the candidate's time stays within its share
    # of the rest of the inference thread's, past it by at most the banked credit and the one frame that
    # crossed it.
    one_frame = max(run._shadow_s / shadow.frames, 0.004)
    assert run._shadow_s <= 0.25 * run._active_s + pipeline_module._SHADOW_CREDIT_S + one_frame


def test_a_failing_candidate_costs_the_serving_model_nothing() -> None:
    def broken(i: int) -> str:
        raise RuntimeError("candidate crashed")

    holder = SessionHolder(Scripted("parts", lambda i: "ok", cost_s=0.002))
    holder.set_shadow(Scripted("parts", broken, version="1.1.0"))
    run = pipeline(holder, shadow_budget=4.0)
    decided = [run.process(frame) for frame in frames(5)]

    assert [r.label for r in decided if r is not None] == ["ok"] * 5
    assert run.errors == 0 and run.consecutive_errors == 0
    shadow = shadow_of(run.take_window())
    assert (shadow.frames, shadow.errors) == (0, 5)


def test_no_shadow_runs_without_a_candidate_or_while_the_fallback_serves() -> None:
    candidate = Scripted("parts", lambda i: "ok", version="1.1.0")
    holder = SessionHolder(Scripted("fallback", lambda i: "dark"), fallback=True)
    holder.set_shadow(candidate)
    run = pipeline(holder, shadow_budget=4.0)
    for frame in frames(3):
        run.process(frame)
    assert candidate.calls == 0 and "shadow" not in run.take_window()

    holder.swap(Scripted("parts", lambda i: "ok"))
    holder.set_shadow(None)
    for frame in frames(3):
        run.process(frame)
    assert "shadow" not in run.take_window()


def test_the_budget_must_be_positive() -> None:
    with pytest.raises(ValueError):
        pipeline(SessionHolder(Scripted("parts", lambda i: "ok")), shadow_budget=0)

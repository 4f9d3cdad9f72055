"""The frame pipeline: capture -> inference -> (local actions, window telemetry, escalation).

Three kinds of thread, joined by bounded queues so that no stage can hold up
the one before it: capture fills a drop-oldest ``FrameQueue``; the inference
thread decides, adds the result to the open window, and hands matching
results to the action dispatcher and uncertain frames to the escalation
client, each behind its own bounded queue. The run loop takes the closed
window every telemetry interval (``take_window``) and appends it to the
outbox as a ``window`` record; ``PipelineComponent`` does exactly that when
plugged into ``agent.runtime.Runtime``.

``python -m agent.pipeline MODEL SOURCE`` runs a model over a folder or a
video and prints one JSON line per frame (tests and benchmarks use
``run_over`` directly).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any, Protocol

from agent.actions import ActionDispatcher
from agent.capture import Capture, CaptureError, Closed, Frame, FrameQueue, FrameSource, open_source
from agent.config import AgentConfig, InferenceSettings
from agent.escalation import EscalationClient
from agent.inference import ModelSession, SessionHolder
from agent.kernel import protocol
from agent.kernel.agreement import agreement
from agent.kernel.decode import Result
from agent.kernel.spec import Thresholds
from agent.window import WindowAggregator

log = logging.getLogger(__name__)

ResultCallback = Callable[[Frame, Result], None]
# At most one error log line per this many seconds: a model failing on every frame must not flood the journal.
_ERROR_LOG_INTERVAL_S = 10.0
# The most shadow time a quiet spell (a camera slower than the models) can bank for a burst of frames.
_SHADOW_CREDIT_S = 0.1


class Pipeline:
    """Runs a source through the model in service until the source ends or ``stop()``."""

    def __init__(
        self,
        source: FrameSource,
        holder: SessionHolder,
        *,
        queue_size: int = 2,
        lossless: bool = False,
        max_fps: float | None = None,
        every_nth: int = 1,
        actions: ActionDispatcher | None = None,
        escalation: EscalationClient | None = None,
        telemetry: bool = True,
        on_result: ResultCallback | None = None,
        shadow_budget: float = 0.25,
    ) -> None:
        if shadow_budget <= 0:
            raise ValueError("shadow_budget must be > 0")
        self.holder = holder
        self.queue = FrameQueue(queue_size, lossless=lossless)
        self.capture = Capture(source, self.queue, max_fps=max_fps, every_nth=every_nth)
        self.actions = actions
        self.escalation = escalation
        self.window = WindowAggregator() if telemetry else None
        self.on_result = on_result
        self.inferred = 0
        self.errors = 0
        self.consecutive_errors = 0
        """Frames in a row the model failed on; the updater engages the fallback model on a run of them."""
        self.escalated = 0
        self.done = threading.Event()
        self._dropped_seen = 0
        self._last_error_log = -_ERROR_LOG_INTERVAL_S
        self._thread: threading.Thread | None = None
        self.shadow_budget = shadow_budget
        """The candidate in shadow may take this share of the time the model in service takes."""
        self._shadow_of: object | None = None
        self._shadow_mark = 0.0
        self._shadow_credit = 0.0
        self._active_s = 0.0
        """The inference thread's time outside the candidate since shadowing began (what earns it credit)."""
        self._shadow_s = 0.0
        """The candidate's time since shadowing began."""

    def start(self) -> Pipeline:
        if self.actions is not None:
            self.actions.start()
        if self.escalation is not None:
            self.escalation.start()
        self._thread = threading.Thread(target=self._run, name="inference", daemon=True)
        self._thread.start()
        self.capture.start()
        return self

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until the source is exhausted and every captured frame is decided."""
        return self.done.wait(timeout)

    def stop(self, timeout: float | None = 5.0) -> None:
        self.capture.stop(timeout)
        if self._thread is not None:
            self._thread.join(timeout)
        if self.actions is not None:
            self.actions.stop(timeout)
        if self.escalation is not None:
            self.escalation.stop(timeout)

    def take_window(self) -> dict[str, Any]:
        """Close the current telemetry window; returns ``protocol.Window`` data for a ``window`` record."""
        if self.window is None:
            raise RuntimeError("this pipeline runs with telemetry off")
        dropped = self.queue.dropped
        self.window.add_dropped(dropped - self._dropped_seen)
        self._dropped_seen = dropped
        return self.window.close()

    def counters(self) -> dict[str, Any]:
        counters: dict[str, Any] = {
            "read": self.capture.read_frames,
            "captured": self.capture.captured,
            "skipped": self.capture.skipped,
            "dropped": self.queue.dropped,
            "inferred": self.inferred,
            "errors": self.errors,
            "escalated": self.escalated,
            "swaps": self.holder.swaps,
            "fallback": self.holder.fallback,
        }
        if self.actions is not None:
            counters["actions"] = asdict(self.actions.counters)
        if self.escalation is not None:
            counters["escalation"] = asdict(self.escalation.counters)
        return counters

    def _run(self) -> None:
        try:
            while True:
                try:
                    frame = self.queue.get()
                except Closed:
                    return
                if frame is not None:
                    self.process(frame)
        finally:
            self.done.set()

    def process(self, frame: Frame) -> Result | None:
        """Decide one frame and hand the result on; runs on the inference thread."""
        try:
            result = self.holder.infer(frame.image)
        except Exception as exc:  # any failure of the model must cost one frame, not the agent
            self.errors += 1
            self.consecutive_errors += 1
            if self.window is not None:
                self.window.add_error()
            now = time.monotonic()
            if now - self._last_error_log >= _ERROR_LOG_INTERVAL_S:
                self._last_error_log = now
                log.error("inference failed", extra={"frame": frame.name, "errors": self.errors, "error": str(exc)})
            return None
        self.consecutive_errors = 0
        self.inferred += 1
        result.frame_index = frame.index
        result.ts = frame.ts
        if self.window is not None:
            self.window.add(result, fallback=self.holder.fallback)
            self._shadow(frame, result)
        if self.actions is not None:
            self.actions.submit(result)
        if self.escalation is not None:
            thresholds: Thresholds = getattr(self.holder.session, "thresholds", None) or Thresholds()
            if self.escalation.offer(frame, result, thresholds.escalate_below):
                self.escalated += 1
                if self.window is not None:
                    self.window.add_escalation()
        if self.on_result is not None:
            self.on_result(frame, result)
        return result

    def _shadow(self, frame: Frame, result: Result) -> None:
        """Run the shadow candidate on this frame too, within its time budget, and count agreement.

        The inference thread's time not spent on the candidate earns it
        ``shadow_budget`` times as much (unused credit is capped at
        ``_SHADOW_CREDIT_S``); a frame that finds no credit goes unshadowed. So
        the frame rate keeps at least ``1 / (1 + shadow_budget)`` of itself
        (80 % at the default 0.25) whatever the candidate costs, and a camera
        slower than the models leaves the candidate every frame. Its result is
        counted in the window and never acted on; its failure costs nothing but
        a count.
        """
        shadow = self.holder.shadow
        if shadow is None or self.holder.fallback or self.window is None:
            return
        now = time.perf_counter()
        if shadow is not self._shadow_of:
            self._shadow_of, self._shadow_mark, self._shadow_credit = shadow, now, 0.0
        self._active_s += now - self._shadow_mark
        self._shadow_credit = min(
            self._shadow_credit + self.shadow_budget * (now - self._shadow_mark), _SHADOW_CREDIT_S
        )
        self._shadow_mark = now
        if self._shadow_credit < 0:
            return
        try:
            other = shadow.infer(frame.image)
        except Exception as exc:  # a failing candidate must never cost the model in service a frame
            self.window.add_shadow(None)
            logged_at = time.monotonic()
            if logged_at - self._last_error_log >= _ERROR_LOG_INTERVAL_S:
                self._last_error_log = logged_at
                log.warning("shadow inference failed", extra={"frame": frame.name, "error": str(exc)})
        else:
            compared, agreed = agreement(result, other)
            self.window.add_shadow(other, compared=compared, agreed=agreed)
        finally:
            self._shadow_mark = time.perf_counter()
            spent = self._shadow_mark - now
            self._shadow_s += spent
            self._shadow_credit -= spent


# --- the run loop's side ----------------------------------------------------


class _Outbox(Protocol):
    def append(self, kind: str, data: Any) -> int: ...


class _Desired(Protocol):
    def subscribe(self, listener: Callable[[protocol.Desired], None]) -> None: ...


class _Runtime(Protocol):
    @property
    def outbox(self) -> _Outbox: ...

    @property
    def desired_state(self) -> _Desired: ...

    model_version: str | None

    def register_command(self, name: str, handler: Callable[[protocol.Command], dict[str, Any]]) -> None: ...

    def event(self, kind: str, **data: Any) -> None: ...

    def on_reconnect(self, callback: Callable[[], None]) -> None: ...

    def hold_backlog_while(self, pending: Callable[[], bool]) -> None: ...


class PipelineComponent:
    """Plugs a pipeline into ``agent.runtime.Runtime``: ``Runtime(config, components=[this])``.

    Every ``interval_s`` it appends the closed window to the runtime's outbox.
    It follows the runtime config of each verified desired document:
    ``config.escalation_threshold`` (absent: the manifest's default) and
    ``config.telemetry_interval_s`` (absent: the ``interval_s`` it was built with).
    """

    def __init__(self, pipeline: Pipeline, *, interval_s: float = 60.0) -> None:
        if interval_s <= 0:
            raise ValueError("interval_s must be > 0")
        self.pipeline = pipeline
        self.default_interval_s = interval_s
        self.interval_s = interval_s
        """Read at each wait of the window thread, so a new value applies from the next window."""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, runtime: _Runtime) -> None:
        runtime.model_version = self.pipeline.holder.session.version  # for heartbeats and ``reported``
        runtime.desired_state.subscribe(self.apply_desired)
        escalation = self.pipeline.escalation
        if escalation is not None:

            def answered(command: protocol.Command) -> dict[str, Any]:
                data = escalation.record_answer(command.args)
                if not data.get("duplicate"):
                    runtime.event("escalation_answered", command_id=command.id, **data)
                return data

            runtime.register_command("escalation_result", answered)
            # After an outage: the reported state and events first, then escalations, then the telemetry backlog.
            runtime.on_reconnect(escalation.wake)
            runtime.hold_backlog_while(escalation.has_backlog)
        self.pipeline.start()
        self._thread = threading.Thread(target=self._tick, args=(runtime.outbox,), name="windows", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        # The pipeline first: the last window then counts every frame that was decided.
        self.pipeline.stop()
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def apply_desired(self, desired: protocol.Desired) -> None:
        """The desired state's listener: called with each verified document."""
        config = desired.config
        self.interval_s = config.telemetry_interval_s or self.default_interval_s
        if self.pipeline.escalation is not None:
            self.pipeline.escalation.set_threshold(config.escalation_threshold)
            self.pipeline.escalation.set_privacy(config.escalation_privacy)
            self.pipeline.escalation.set_budget(
                config.escalation_max_frames_per_s, config.escalation_bandwidth_bytes_per_s
            )

    @classmethod
    def build(cls, config: AgentConfig, holder: SessionHolder) -> PipelineComponent:
        """The one way to build what ``run`` runs from the config: capture, actions, escalation client, windows.

        Raises CaptureError when there is no ``[capture]`` source or it cannot be opened.
        """
        capture = config.capture
        if capture is None:
            raise CaptureError("no [capture] source is configured")
        source = open_source(capture.source, loop=capture.loop)
        escalation = None
        if config.escalation.enabled:
            escalation = EscalationClient(
                config.escalation,
                server_url=config.server.url,
                device_id=config.device.id,
                secret=config.device.secret,
                queue_dir=config.data_dir / "escalations",
            )
        pipeline = Pipeline(
            source,
            holder,
            queue_size=capture.queue_size,
            max_fps=capture.max_fps,
            every_nth=capture.every_nth,
            actions=ActionDispatcher.from_settings(config.actions) if config.actions.rules else None,
            escalation=escalation,
            shadow_budget=config.inference.shadow_budget,
        )
        return cls(pipeline, interval_s=config.vision.window_interval_s)

    def _tick(self, outbox: _Outbox) -> None:
        # The last, partial window is written on stop too, so a clean shutdown loses no counts.
        while not self._stop.wait(self.interval_s):
            self._append(outbox)
        self._append(outbox)

    def _append(self, outbox: _Outbox) -> None:
        try:
            outbox.append("window", self.pipeline.take_window())
        except (ValueError, RuntimeError) as exc:  # OutboxError is a ValueError; a closed outbox on shutdown
            log.warning("window record not stored", extra={"error": str(exc)})


# --- offline runs -----------------------------------------------------------


def run_over(
    model: ModelSession | SessionHolder, source: str | FrameSource, *, every_nth: int = 1
) -> Iterator[tuple[Frame, Result]]:
    """Every frame of a folder or video with its result, on the caller's thread (nothing dropped)."""
    holder = model if isinstance(model, SessionHolder) else SessionHolder(model)
    frames = open_source(source) if isinstance(source, str) else source
    capture = Capture(frames, FrameQueue(1, lossless=True), every_nth=every_nth)
    try:
        for frame in capture.frames():
            result = holder.infer(frame.image)
            result.frame_index = frame.index
            result.ts = frame.ts
            yield frame, result
    finally:
        frames.close()


def load_model(path: Path, *, settings: InferenceSettings | None = None) -> ModelSession:
    """A bundle directory (``manifest.json``) or a model file with its metadata JSON beside it."""
    if path.is_dir():
        return ModelSession.from_bundle(path, settings=settings)
    return ModelSession.from_metadata(path, settings=settings)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agent.pipeline", description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=Path, help="a bundle directory, a model .onnx or its metadata .json")
    parser.add_argument("source", help="an image folder, a video file, a camera index or a stream URL")
    parser.add_argument("--every-nth", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads (0: all cores)")
    args = parser.parse_args(argv)
    try:
        model = load_model(args.model, settings=InferenceSettings(intra_op_threads=args.threads))
        for frame, result in run_over(model, args.source, every_nth=args.every_nth):
            print(json.dumps({"frame": frame.name, **result.to_json()}), flush=True)
    except (OSError, ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

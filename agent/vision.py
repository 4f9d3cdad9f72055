"""Inference in ``edgefleet-agent run``: the frame pipeline on the configured source.

The pipeline decides with whatever model the updater holds (the installed
one, or the fallback), so an update swaps the model under it between two
frames. Every ``[vision] window_interval_s`` the closed window becomes a
``window`` telemetry record in the outbox (``agent.pipeline.PipelineComponent``).
A source that cannot be opened is reported as an event and logged; the agent
keeps running (updates, telemetry, commands) without inference.
"""

from __future__ import annotations

import logging
from typing import Any

from agent.capture import CaptureError
from agent.config import AgentConfig
from agent.pipeline import Pipeline, PipelineComponent
from agent.updater import Updater

log = logging.getLogger(__name__)


class Vision:
    """A runtime ``Component``: capture -> inference -> actions, windows and escalation."""

    def __init__(self, config: AgentConfig, updater: Updater) -> None:
        self.config = config
        self.updater = updater
        self.pipeline: Pipeline | None = None
        self._component: PipelineComponent | None = None

    def start(self, runtime: Any) -> None:
        config = self.config
        capture = config.capture
        if capture is None or not config.vision.enabled:
            log.info("inference off", extra={"reason": "no [capture] source" if capture is None else "disabled"})
            return
        try:
            self._component = component = PipelineComponent.build(config, self.updater.holder)
        except CaptureError as exc:
            log.error("capture unavailable", extra={"source": capture.source, "error": str(exc)})
            runtime.event("capture_unavailable", source=capture.source[:200], error=str(exc)[:300])
            return
        self.pipeline = component.pipeline
        component.start(runtime)
        self.updater.attach(self.pipeline)
        log.info(
            "inference started",
            extra={"source": capture.source, "model_version": self.updater.holder.session.version},
        )

    def stop(self) -> None:
        if self._component is not None:
            self._component.stop()

"""Django-free helpers of the updater tests (the kill -9 child process imports them)."""

from __future__ import annotations

from typing import Any

from agent import config as agent_config
from agent.desired import DesiredState
from agent.trust import Trust


class RecordingRuntime:
    """What the updater and the desired state need of ``agent.runtime.Runtime``; keeps every report and event."""

    def __init__(self, config: agent_config.AgentConfig, *, trust: Trust | None = None) -> None:
        self.config = config
        self.model_version: str | None = None
        self.reported_fields: dict[str, Any] = {}
        self.reports: list[dict[str, Any]] = []
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.desired_state = DesiredState(config, trust or Trust(config), self)

    def set_reported(self, **fields: Any) -> None:
        self.reported_fields.update(fields)
        self.report()

    def report(self, **fields: Any) -> None:
        self.reports.append({**self.reported_fields, **fields})

    def event(self, kind: str, **data: Any) -> None:
        self.events.append((kind, data))

    def phases(self) -> list[str]:
        phases: list[str] = []
        for report in self.reports:
            if not phases or phases[-1] != report.get("phase"):
                phases.append(report.get("phase", "idle"))
        return phases

    @property
    def last(self) -> dict[str, Any]:
        return self.reports[-1]

    def event_kinds(self) -> list[str]:
        return [kind for kind, _ in self.events]

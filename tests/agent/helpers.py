"""Django-free helpers of the agent tests and the benchmarks (the kill -9 child process imports them too)."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

from agent import config as agent_config
from agent.desired import DesiredState
from agent.kernel import protocol
from agent.trust import Trust


def make_agent_config(
    data_dir: Path,
    *,
    server_url: str = "http://127.0.0.1:9",
    mqtt_url: str = "mqtt://127.0.0.1:1",
    device_id: str = "dev-test",
    secret: str = "s3cret",  # noqa: S107 - a made-up device of the tests
    trust: list[dict[str, Any]] | None = None,
    **sections: dict[str, Any],
) -> agent_config.AgentConfig:
    """The one agent config of the tests and benchmarks: every required section filled in.

    Each of ``sections`` is merged key by key over the defaults
    (``agent={"heartbeat_interval_s": 1}`` keeps the data dir) or added
    (``capture={...}``). With ``trust`` the trust store is written where the
    agent reads it, as enrollment does.
    """
    document: dict[str, dict[str, Any]] = {
        "server": {"url": server_url},
        "device": {"id": device_id, "secret": secret},
        "mqtt": {"url": mqtt_url},
        "agent": {"data_dir": str(data_dir)},
        # One thread: the tests and benchmarks share two cores with everything else.
        "inference": {"intra_op_threads": 1},
    }
    for name, values in sections.items():
        document[name] = {**document.get(name, {}), **values}
    if trust is not None:
        data_dir.mkdir(parents=True, exist_ok=True)
        (data_dir / "trust.json").write_text(json.dumps(trust))
    return agent_config.AgentConfig.model_validate(document)


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


def desired_doc(
    generation: int, *, device_id: str = "dev-test", lifetime_s: float = 86400, **fields: Any
) -> protocol.Desired:
    """An unsigned desired document for ``device_id`` (the test configs' device), valid ``lifetime_s`` from now."""
    issued_at = protocol.utcnow()
    return protocol.Desired(
        device_id=device_id,
        generation=generation,
        issued_at=issued_at,
        expires=issued_at + timedelta(seconds=lifetime_s),
        **fields,
    )

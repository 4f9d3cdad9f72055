from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any
from unittest import mock

import paho.mqtt.client as mqtt

from agent.kernel import protocol
from bridge.process import Bridge, BridgeConfig


def offline_bridge(**config: Any) -> Bridge:
    """A bridge that is never connected; what it would publish is recorded on a mock.

    The mock has paho's ``Client.publish`` signature, so a call paho would
    refuse (a wrong argument name, a missing topic) fails the test.
    """
    bridge = Bridge(BridgeConfig(url="mqtt://127.0.0.1:1", **config))
    bridge.client.publish = mock.create_autospec(bridge.client.publish)  # type: ignore[method-assign]
    return bridge


def message_info(rc: mqtt.MQTTErrorCode, *, published: bool) -> Any:
    """What paho's ``publish`` returns: ``rc`` says whether it queued the message, ``published`` whether it went."""
    info = mock.create_autospec(mqtt.MQTTMessageInfo, instance=True)
    info.rc = rc
    info.is_published.return_value = published
    if rc == mqtt.MQTT_ERR_QUEUE_SIZE:
        info.wait_for_publish.side_effect = ValueError("Message is not queued due to ERR_QUEUE_SIZE")
    return info


def published(bridge: Bridge, suffix: str) -> list[tuple[str, dict[str, Any]]]:
    """(device id, message) of everything the bridge published on ``suffix``, in order."""
    calls = bridge.client.publish.call_args_list  # type: ignore[attr-defined]
    return [(c.args[0].split("/")[2], json.loads(c.args[1])) for c in calls if c.args[0].endswith(f"/{suffix}")]


def now() -> str:
    return datetime.now(timezone.utc).isoformat()


def heartbeat(seq: int, **data: Any) -> dict[str, Any]:
    body = {
        "agent_version": "0.1.0",
        "uptime_s": 5.0,
        "cpu_percent": 12.5,
        "memory_percent": 40.0,
        "disk_percent": 30.0,
        "disk_free_bytes": 10**9,
        "temperature_c": 51.0,
    }
    body.update(data)
    return {"seq": seq, "kind": "heartbeat", "ts": now(), "data": body}


def telemetry(*seqs: int, floor: int | None = None) -> bytes:
    message: dict[str, Any] = {"v": 1, "type": "telemetry", "records": [heartbeat(s) for s in seqs]}
    if floor is not None:
        message["floor"] = floor
    return json.dumps(message).encode()


def status(state: str) -> bytes:
    return protocol.encode(protocol.Status(state=state))  # type: ignore[arg-type]


def topic(device_id: str, suffix: str) -> str:
    return protocol.topic(device_id, suffix)

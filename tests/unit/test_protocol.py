from __future__ import annotations

import json

import pytest

from agent import protocol
from agent.protocol import ProtocolError


def payload(**fields: object) -> bytes:
    return json.dumps({"v": 1, **fields}).encode()


def test_it_decodes_a_status_message() -> None:
    message = protocol.decode("status", payload(type="status", state="online"))
    assert isinstance(message, protocol.Status)
    assert message.state == "online"


def test_the_last_will_is_a_valid_offline_status() -> None:
    message = protocol.decode("status", protocol.OFFLINE_WILL)
    assert isinstance(message, protocol.Status) and message.state == "offline"


@pytest.mark.parametrize(
    ("suffix", "raw", "reason"),
    [
        ("status", b"\xff\xfe", "not_json"),
        ("status", b"[1, 2]", "not_object"),
        ("status", json.dumps({"v": 2, "type": "status", "state": "online"}).encode(), "bad_version"),
        ("status", payload(type="self_destruct"), "unknown_type"),
        ("status", payload(type="ack", seq=3), "wrong_topic"),
        ("status", payload(type="status", state="sleepy"), "schema"),
        ("telemetry", payload(type="telemetry", records=[]), "schema"),
        ("status", payload(type="status", state="online", extra="x"), "schema"),
    ],
)
def test_it_rejects_bad_payloads_with_a_reason(suffix: str, raw: bytes, reason: str) -> None:
    with pytest.raises(ProtocolError) as info:
        protocol.decode(suffix, raw)
    assert info.value.reason == reason


def test_it_rejects_a_payload_over_the_size_limit_before_parsing_it() -> None:
    huge = payload(type="status", state="online", agent_version="x" * protocol.MAX_PAYLOAD_BYTES)
    with pytest.raises(ProtocolError) as info:
        protocol.decode("status", huge)
    assert info.value.reason == "too_large"


def test_topics_round_trip() -> None:
    assert protocol.parse_topic(protocol.topic("dev-1", "telemetry")) == ("dev-1", "telemetry")


@pytest.mark.parametrize("bad", ["edgefleet/v1/dev-1", "edgefleet/v2/dev-1/status", "edgefleet/v1/dev-1/secrets", "x"])
def test_it_rejects_foreign_topics(bad: str) -> None:
    with pytest.raises(ProtocolError):
        protocol.parse_topic(bad)


def _window_batch(**data: object) -> bytes:
    import json

    body = {"start": "2026-01-01T00:00:00Z", "end": "2026-01-01T00:00:10Z", "frames": 10, **data}
    record = {"seq": 1, "kind": "window", "ts": "2026-01-01T00:00:10Z", "data": body}
    return json.dumps({"v": 1, "type": "telemetry", "records": [record]}).encode()


def test_a_window_summary_validates_and_yields_its_latency_histogram() -> None:
    message = protocol.decode("telemetry", _window_batch(latency_ms={"100": 7, "101": 3}, classes={"ok": 9}))
    assert isinstance(message, protocol.Telemetry)
    window = protocol.window_of(message.records[0])
    assert window.frames == 10 and window.latency().total == 10


@pytest.mark.parametrize(
    "data",
    [
        {"frames": -1},
        {"latency_ms": {"999": 1}},
        {"latency_ms": {"abc": 1}},
        {"confidence": [1, 2, 3]},
        {"end": "2025-01-01T00:00:00Z"},
    ],
)
def test_a_malformed_window_summary_is_refused_with_a_reason(data: dict[str, object]) -> None:
    message = protocol.decode("telemetry", _window_batch(**data))
    assert isinstance(message, protocol.Telemetry)
    with pytest.raises(protocol.ProtocolError) as caught:
        protocol.window_of(message.records[0])
    assert caught.value.reason == "schema"

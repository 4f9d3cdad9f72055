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

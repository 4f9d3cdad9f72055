from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest

from agent.kernel import protocol
from agent.kernel.protocol import ProtocolError


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


def record(**fields: object) -> dict[str, object]:
    return {"seq": 1, "kind": "window", "ts": "2026-11-23T10:00:00Z", "data": {}, **fields}


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        # Numbers no database JSON column takes, and strings that are not UTF-8 text.
        (b'{"v": 1, "type": "telemetry", "records": [], "x": NaN}', "not_json"),
        (b'{"v": 1, "type": "telemetry", "records": [], "x": 1e400}', "not_json"),
        (b'{"v": 1, "type": "telemetry", "records": [], "x": "\\ud800"}', "not_json"),
        (b"[" * 2000 + b"]" * 2000, "not_json"),
        # seq is a JSON integer that fits a bigint: not 5.0, "5", true or 2**63.
        (payload(type="telemetry", records=[record(seq=5.0)]), "schema"),
        (payload(type="telemetry", records=[record(seq="5")]), "schema"),
        (payload(type="telemetry", records=[record(seq=True)]), "schema"),
        (payload(type="telemetry", records=[record(seq=2**63)]), "schema"),
        (payload(type="telemetry", records=[record()], floor=2**63), "schema"),
        # A record's time says which instant it is: no naive times, no bare numbers.
        (payload(type="telemetry", records=[record(ts="2026-11-23T10:00:00")]), "schema"),
        (payload(type="telemetry", records=[record(data=[1, 2])]), "schema"),
    ],
)
def test_telemetry_is_refused_unless_the_database_would_read_it_as_the_protocol_does(raw: bytes, reason: str) -> None:
    with pytest.raises(ProtocolError) as info:
        protocol.decode("telemetry", raw)
    assert info.value.reason == reason


def test_a_record_keeps_its_data_as_decoded_and_its_time_with_its_offset() -> None:
    message = protocol.decode(
        "telemetry", payload(type="telemetry", records=[record(seq=2**63 - 1, ts="2026-11-23T11:00:00+01:00")])
    )
    assert isinstance(message, protocol.Telemetry)
    (only,) = message.records
    assert only.seq == 2**63 - 1 and only.data == {}
    assert only.ts == datetime(2026, 11, 23, 10, tzinfo=timezone.utc)


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


@pytest.mark.parametrize(
    ("document", "where"),
    [
        ({"config": {"escalation_threshold": "lots"}}, "config.escalation_threshold"),
        ({"config": {"telemetry_interval_s": 0}}, "config.telemetry_interval_s"),
        ({"config": {"act_above": 0.9}}, "config.act_above"),
        ({"model": {"name": "parts", "version": "1.2.0"}}, "model.sequence"),
        (
            {"model": {"name": "parts", "version": "1", "sequence": 1, "bundle_url": "/b", "manifest_sha256": "x"}},
            "model.manifest_sha256",
        ),
    ],
)
def test_a_desired_document_is_refused_unless_every_field_is_one_the_device_knows(
    document: dict[str, object], where: str
) -> None:
    payload = json.dumps({"v": 1, "type": "desired", "generation": 2, **document}).encode()
    with pytest.raises(protocol.ProtocolError) as caught:
        protocol.decode("desired", payload)
    assert caught.value.reason == "schema" and caught.value.detail.startswith(where)

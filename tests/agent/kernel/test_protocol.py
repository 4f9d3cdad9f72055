from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest

from agent.kernel import protocol
from agent.kernel.protocol import ProtocolError

# The receiving time the fixed timestamps below are checked against.
RECEIVED = datetime(2026, 11, 23, 10, 1, tzinfo=timezone.utc)


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
        protocol.decode("telemetry", raw, received_at=RECEIVED)
    assert info.value.reason == reason


def test_a_record_keeps_its_data_as_decoded_and_its_time_with_its_offset() -> None:
    message = protocol.decode(
        "telemetry",
        payload(type="telemetry", records=[record(seq=2**63 - 1, ts="2026-11-23T11:00:00+01:00")]),
        received_at=RECEIVED,
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

    body = {"start": "2026-11-23T10:00:00Z", "end": "2026-11-23T10:00:10Z", "frames": 10, **data}
    record = {"seq": 1, "kind": "window", "ts": "2026-11-23T10:00:10Z", "data": body}
    return json.dumps({"v": 1, "type": "telemetry", "records": [record]}).encode()


def test_a_window_summary_validates_and_yields_its_latency_histogram() -> None:
    message = protocol.decode(
        "telemetry", _window_batch(latency_ms={"100": 7, "101": 3}, classes={"ok": 9}), received_at=RECEIVED
    )
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
    message = protocol.decode("telemetry", _window_batch(**data), received_at=RECEIVED)
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
    bound = {"device_id": "dev-1", "expires": "2099-01-01T00:00:00Z"}
    payload = json.dumps({"v": 1, "type": "desired", "generation": 2, **bound, **document}).encode()
    with pytest.raises(protocol.ProtocolError) as caught:
        protocol.decode("desired", payload)
    assert caught.value.reason == "schema" and caught.value.detail.startswith(where)


# --- bounds: every field within what is stored and re-encoded -----------------


def _records(*records: dict[str, object], **fields: object) -> bytes:
    return payload(type="telemetry", records=list(records), **fields)


def _reason(suffix: str, raw: bytes) -> str:
    with pytest.raises(ProtocolError) as info:
        protocol.decode(suffix, raw, received_at=RECEIVED)
    return info.value.reason


@pytest.mark.parametrize(
    "ts",
    [
        "0001-01-01T00:00:00+14:00",
        "0001-01-01T00:00:00-14:00",
        "0001-01-01T00:00:00Z",
        "9999-12-31T23:59:59+14:00",
        "9999-12-31T23:59:59-14:00",
        "9999-12-31T23:59:59Z",
        # Just past either end of the window.
        (RECEIVED - protocol.MAX_AGE - timedelta(seconds=1)).isoformat(),
        (RECEIVED + protocol.MAX_AHEAD + timedelta(seconds=1)).isoformat(),
    ],
)
def test_a_record_time_outside_the_window_around_the_receiving_time_is_a_clock_skew(ts: str) -> None:
    assert _reason("telemetry", _records(record(ts=ts))) == "clock_skew"


def test_a_far_future_heartbeat_is_refused_so_it_cannot_freeze_the_last_heartbeat() -> None:
    beat = record(kind="heartbeat", ts="2030-01-01T00:00:00Z", data={"agent_version": "1"})
    assert _reason("telemetry", _records(beat)) == "clock_skew"


@pytest.mark.parametrize(
    "ts",
    [
        (RECEIVED - protocol.MAX_AGE).isoformat(),
        (RECEIVED + protocol.MAX_AHEAD).isoformat(),
        "2026-11-23T23:59:00+14:00",
    ],
)
def test_a_record_time_inside_the_window_is_accepted_whatever_its_offset(ts: str) -> None:
    message = protocol.decode("telemetry", _records(record(ts=ts)), received_at=RECEIVED)
    assert isinstance(message, protocol.Telemetry) and message.records[0].ts == datetime.fromisoformat(ts)


def test_the_window_is_configurable() -> None:
    raw = _records(record(ts=(RECEIVED + timedelta(minutes=30)).isoformat()))
    with pytest.raises(ProtocolError):
        protocol.decode("telemetry", raw, received_at=RECEIVED)
    assert protocol.decode("telemetry", raw, received_at=RECEIVED, max_ahead=timedelta(hours=1))


def test_the_receiving_time_defaults_to_now() -> None:
    now = datetime.now(timezone.utc)
    assert protocol.decode("telemetry", _records(record(ts=now.isoformat())))
    with pytest.raises(ProtocolError) as info:
        protocol.decode("telemetry", _records(record(ts=(now + timedelta(hours=1)).isoformat())))
    assert info.value.reason == "clock_skew"


@pytest.mark.parametrize(
    ("suffix", "document"),
    [
        ("events", {"type": "event", "kind": "model_swap", "ts": "0001-01-01T00:00:00+14:00"}),
        ("events", {"type": "event", "kind": "model_swap", "ts": "0001-01-01T00:00:00"}),
        ("status", {"type": "status", "state": "online", "ts": "9999-12-31T23:59:59-14:00"}),
        ("reported", {"type": "reported", "generation": 1, "agent_version": "1", "ts": "2030-01-01T00:00:00Z"}),
    ],
)
def test_every_device_time_is_bounded_not_only_telemetry(suffix: str, document: dict[str, object]) -> None:
    assert _reason(suffix, payload(**document)) == "clock_skew"


def test_a_schema_error_beside_a_clock_skew_is_reported_as_schema() -> None:
    raw = _records(record(ts="0001-01-01T00:00:00Z"), record(seq=True))
    assert _reason("telemetry", raw) == "schema"


def test_a_desired_document_is_not_checked_against_the_device_clock() -> None:
    raw = payload(
        type="desired", generation=1, device_id="d-1", issued_at="2001-01-01T00:00:00Z", expires="2001-01-02T00:00:00Z"
    )
    assert isinstance(protocol.decode("desired", raw, received_at=RECEIVED), protocol.Desired)


def _nested(depth: int) -> object:
    value: object = {}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


@pytest.mark.parametrize("depth", [300, protocol.MAX_DEPTH])
def test_deep_data_is_refused_at_decode_as_schema(depth: int) -> None:
    # The record's data sits 4 levels down (document, records, record, data).
    raw = _records(record(data=_nested(depth)))
    assert _reason("telemetry", raw) == "schema"
    raw = payload(type="event", kind="x", ts=RECEIVED.isoformat(), data=_nested(depth))
    assert _reason("events", raw) == "schema"


def test_deep_lists_are_refused_too() -> None:
    raw = payload(type="event", kind="x", ts=RECEIVED.isoformat(), data={"a": json.loads("[" * 300 + "]" * 300)})
    assert _reason("events", raw) == "schema"


def test_nesting_up_to_the_limit_is_accepted_and_re_encodes() -> None:
    raw = _records(record(data=_nested(protocol.MAX_DEPTH - 3)))
    message = protocol.decode("telemetry", raw, received_at=RECEIVED)
    assert isinstance(message, protocol.Telemetry)
    assert json.loads(protocol.encode(message))["records"][0]["data"] == message.records[0].data


@pytest.mark.parametrize("version", [True, 1.0, "1", None, 2])
def test_the_version_is_the_json_integer_1(version: object) -> None:
    raw = json.dumps({"v": version, "type": "status", "state": "online"}).encode()
    assert _reason("status", raw) == "bad_version"


@pytest.mark.parametrize(
    ("suffix", "document"),
    [
        ("ack", {"type": "ack", "seq": 2**63}),
        ("ack", {"type": "ack", "seq": -1}),
        ("ack", {"type": "ack", "seq": True}),
        ("reported", {"type": "reported", "generation": 2**64 - 1, "agent_version": "1"}),
        ("reported", {"type": "reported", "generation": 1.0, "agent_version": "1"}),
        ("reported", {"type": "reported", "generation": 1, "agent_version": "1", "fallback": 1}),
        ("reported", {"type": "reported", "generation": 1, "agent_version": "1", "fallback": "true"}),
        ("desired", {"type": "desired", "generation": 2**63}),
    ],
)
def test_message_integers_fit_their_columns_and_are_never_bools_or_floats(
    suffix: str, document: dict[str, object]
) -> None:
    assert _reason(suffix, payload(**document)) == "schema"


def _data_reason(kind: str, data: dict[str, object]) -> str:
    message = protocol.decode("telemetry", _records(record(kind=kind, data=data)), received_at=RECEIVED)
    assert isinstance(message, protocol.Telemetry)
    read = protocol.window_of if kind == "window" else protocol.heartbeat_of
    with pytest.raises(ProtocolError) as info:
        read(message.records[0])
    return info.value.reason


_WINDOW = {"start": "2026-11-23T09:59:50Z", "end": "2026-11-23T10:00:00Z", "frames": 10}


@pytest.mark.parametrize(
    "data",
    [
        {"frames": 2**64 - 1},
        {"frames": 2**63},
        {"frames": protocol.MAX_COUNT + 1},
        {"frames": -1},
        {"frames": True},
        {"frames": 10.0},
        {"dropped_frames": 2**63},
        {"errors": -1},
        {"escalations": 2**64 - 1},
        {"latency_ms": {"1": 2**63}},
        {"confidence": [2**63] + [0] * 9},
        {"classes": {"ok": -1}},
        {"fallback": 1},
        {"start": "0001-01-01T00:00:00+14:00", "end": "0001-01-01T00:00:10+14:00"},
        {"start": "9999-12-31T23:59:00-14:00", "end": "9999-12-31T23:59:59-14:00"},
        {"start": "2026-11-01T00:00:00Z", "end": "2026-11-23T10:00:00Z"},
    ],
)
def test_window_counts_stay_summable_in_bigint_rollups_and_its_times_near_the_record(data: dict[str, object]) -> None:
    assert _data_reason("window", {**_WINDOW, **data}) == "schema"


def test_window_counts_up_to_the_bound_are_read() -> None:
    message = protocol.decode(
        "telemetry",
        _records(record(kind="window", data={**_WINDOW, "frames": protocol.MAX_COUNT})),
        received_at=RECEIVED,
    )
    assert isinstance(message, protocol.Telemetry)
    assert protocol.window_of(message.records[0]).frames == protocol.MAX_COUNT


_BEAT = {
    "agent_version": "1",
    "uptime_s": 1.0,
    "cpu_percent": 1.0,
    "memory_percent": 1.0,
    "disk_percent": 1.0,
    "disk_free_bytes": 1,
}


@pytest.mark.parametrize(
    "data",
    [
        {"disk_free_bytes": 2**63},
        {"disk_free_bytes": 2**64 - 1},
        {"disk_free_bytes": -1},
        {"disk_free_bytes": True},
        {"outbox_depth": 2**63},
        {"outbox_depth": 1.5},
        {"cpu_percent": True},
        {"uptime_s": "1"},
        {"temperature_c": 1e300},
        {"cpu_freq_mhz": -1.0},
    ],
)
def test_heartbeat_numbers_fit_their_columns_and_are_never_bools(data: dict[str, object]) -> None:
    assert _data_reason("heartbeat", {**_BEAT, **data}) == "schema"


def test_a_heartbeat_with_integer_percentages_is_read() -> None:
    message = protocol.decode(
        "telemetry", _records(record(kind="heartbeat", data={**_BEAT, "cpu_percent": 5})), received_at=RECEIVED
    )
    assert isinstance(message, protocol.Telemetry)
    assert protocol.heartbeat_of(message.records[0]).cpu_percent == 5.0


def test_a_window_of_naive_times_is_read_as_utc() -> None:
    data = {**_WINDOW, "start": "2026-11-23T09:59:50", "end": "2026-11-23T10:00:00"}
    message = protocol.decode("telemetry", _records(record(kind="window", data=data)), received_at=RECEIVED)
    assert isinstance(message, protocol.Telemetry)
    assert protocol.window_of(message.records[0]).frames == 10
    mixed = {**_WINDOW, "start": "2026-11-23T09:59:50", "end": "2026-11-23T10:00:00+00:00"}
    message = protocol.decode("telemetry", _records(record(kind="window", data=mixed)), received_at=RECEIVED)
    assert isinstance(message, protocol.Telemetry)
    assert protocol.window_of(message.records[0]).frames == 10

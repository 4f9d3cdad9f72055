"""Every integer of every inbound message is a JSON integer within its column; `v` is the integer 1.

The matrix walks each field: a boolean, a float, a string, and a value just
past its column are refused with ``schema`` (at decode, or, inside a record's
data, when the data is read), while the edge itself is accepted.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from agent.kernel import protocol
from tests.payloads import heartbeat_data, window_data

pytestmark = pytest.mark.unit

NOW = datetime.now(timezone.utc)
BIGINT = 2**63 - 1
WRONG_KINDS = [True, 1.0, "1"]


def reported(value: Any) -> tuple[str, dict[str, Any]]:
    return "reported", {"v": 1, "type": "reported", "generation": value, "agent_version": "1"}


def seq(value: Any) -> tuple[str, dict[str, Any]]:
    record = {"seq": value, "kind": "heartbeat", "ts": NOW.isoformat(), "data": heartbeat_data()}
    return "telemetry", {"v": 1, "type": "telemetry", "records": [record]}


def floor(value: Any) -> tuple[str, dict[str, Any]]:
    suffix, document = seq(1)
    return suffix, {**document, "floor": value}


def decode(build: Callable[[Any], tuple[str, dict[str, Any]]], value: Any) -> protocol.Message:
    suffix, document = build(value)
    return protocol.decode(suffix, json.dumps(document).encode())


@pytest.mark.parametrize(
    ("build", "edge", "past"),
    [(reported, BIGINT, BIGINT + 1), (seq, BIGINT, BIGINT + 1), (floor, BIGINT, BIGINT + 1)],
    ids=["reported.generation", "records.seq", "floor"],
)
def test_message_integers_are_json_integers_within_a_bigint(build: Any, edge: int, past: int) -> None:
    decode(build, edge)
    for value in [*WRONG_KINDS, past, -1]:
        with pytest.raises(protocol.ProtocolError) as refused:
            decode(build, value)
        assert refused.value.reason == "schema", value


def record(kind: str, data: dict[str, Any]) -> protocol.TelemetryRecord:
    return protocol.TelemetryRecord(seq=1, kind=kind, ts=NOW, data=data)  # type: ignore[arg-type]


HEARTBEAT_FIELDS = {"disk_free_bytes": BIGINT, "outbox_depth": BIGINT}
WINDOW_COUNTS = ["frames", "dropped_frames", "errors", "escalations"]


@pytest.mark.parametrize("field", sorted(HEARTBEAT_FIELDS))
def test_heartbeat_integers_fit_their_columns(field: str) -> None:
    protocol.heartbeat_of(record("heartbeat", heartbeat_data(**{field: HEARTBEAT_FIELDS[field]})))
    for value in [*WRONG_KINDS, BIGINT + 1, -1]:
        with pytest.raises(protocol.ProtocolError, match=field):
            protocol.heartbeat_of(record("heartbeat", heartbeat_data(**{field: value})))


HEARTBEAT_NUMBERS = ["cpu_percent", "memory_percent", "temperature_c", "cpu_freq_mhz", "cpu_freq_max_mhz"]


@pytest.mark.parametrize("field", HEARTBEAT_NUMBERS)
def test_heartbeat_numbers_are_numbers_within_what_is_physical(field: str) -> None:
    for value in [True, "50", 1e308]:
        with pytest.raises(protocol.ProtocolError, match=field):
            protocol.heartbeat_of(record("heartbeat", heartbeat_data(**{field: value})))


def window(**fields: Any) -> dict[str, Any]:
    return {**window_data(NOW - timedelta(seconds=10), [20.0], [0.5], ["ok"]), **fields}


@pytest.mark.parametrize("field", WINDOW_COUNTS)
def test_window_counts_stay_summable_by_the_rollups(field: str) -> None:
    protocol.window_of(record("window", window(**{field: protocol.MAX_COUNT})))
    for value in [*WRONG_KINDS, protocol.MAX_COUNT + 1, 2**64 - 1, -1]:
        with pytest.raises(protocol.ProtocolError, match=field):
            protocol.window_of(record("window", window(**{field: value})))


@pytest.mark.parametrize(
    "fields",
    [
        {"latency_ms": {"3": protocol.MAX_COUNT + 1}},
        {"latency_ms": {"3": True}},
        {"confidence": [protocol.MAX_COUNT + 1] + [0] * 19},
        {"confidence": [1.0] + [0] * 19},
        {"classes": {"ok": protocol.MAX_COUNT + 1}},
        {"classes": {"ok": False}},
        {"fallback": 1},
    ],
    ids=["latency", "latency-bool", "confidence", "confidence-float", "classes", "classes-bool", "fallback-int"],
)
def test_window_histograms_and_flags_are_strict(fields: dict[str, Any]) -> None:
    with pytest.raises(protocol.ProtocolError):
        protocol.window_of(record("window", window(**fields)))


@pytest.mark.parametrize("version", ["true", "1.0", '"1"', "2", "0", "null"])
def test_only_the_json_integer_1_is_protocol_version_1(version: str) -> None:
    """As found: "v": true and "v": 1.0 were taken for version 1 (true == 1 == 1.0 in Python)."""
    payload = b'{"v": ' + version.encode() + b', "type": "status", "state": "online"}'
    with pytest.raises(protocol.ProtocolError) as refused:
        protocol.decode("status", payload)
    assert refused.value.reason == "bad_version"

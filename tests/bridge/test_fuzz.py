"""The bridge never dies of input, and keeps processing good messages after bad ones."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.kernel import protocol
from bridge.process import Bridge
from fleet.models import Device, Site
from tests.bridge.helpers import offline_bridge, status, topic

pytestmark = pytest.mark.django_db

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=50),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=20,
)
known_types = st.sampled_from(["status", "reported", "telemetry", "event", "desired", "ack", "command"])
documents = st.one_of(
    st.dictionaries(st.text(max_size=10), json_values, max_size=6),
    st.fixed_dictionaries(
        {"v": st.just(1), "type": known_types},
        optional={
            "state": json_values,
            "records": json_values,
            "generation": json_values,
            "kind": json_values,
            "data": json_values,
            "agent_version": st.text(max_size=300),
            "phase": json_values,
            "floor": json_values,
        },
    ),
    st.fixed_dictionaries({"v": st.just(1), "type": st.text(max_size=20)}),
)
payloads = st.one_of(
    st.binary(max_size=2048),
    documents.map(lambda d: json.dumps(d).encode()),
    st.text(max_size=100).map(
        lambda t: json.dumps({"v": 1, "type": "status", "state": "online", "agent_version": t * 50}).encode()
    ),
)
suffixes = st.sampled_from(protocol.SUFFIXES)


@pytest.fixture
def bridge() -> Bridge:
    return offline_bridge(max_payload=64 * 1024)


@pytest.fixture
def device(site: Site, enroll_device: Callable[..., Any]) -> Device:
    return enroll_device(site).device


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(suffix=suffixes, payload=payloads)
def test_the_bridge_survives_any_payload(bridge: Bridge, device: Device, suffix: str, payload: bytes) -> None:
    outcome = bridge.handle(topic(device.device_id, suffix), payload)
    assert outcome not in ("storage_error", "internal_error"), "a payload that passed validation must be storable"


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.text(max_size=300), payload=st.binary(max_size=64))
def test_the_bridge_survives_any_topic(bridge: Bridge, name: str, payload: bytes) -> None:
    outcome = bridge.handle(name, payload)
    try:
        protocol.parse_topic(name)
    except protocol.ProtocolError:
        assert outcome == "bad_topic"
    else:
        assert outcome not in ("ok", "storage_error", "internal_error")


def test_good_messages_are_processed_after_a_storm_of_bad_ones(bridge: Bridge, device: Device) -> None:
    for junk in [b"", b"\x00" * 100, b"[" * 50_000, b'{"v":1,"type":"status","state":7}', b"[]" * 1000]:
        bridge.handle(topic(device.device_id, "status"), junk)
    assert bridge.handle(topic(device.device_id, "status"), status("online")) == "ok"
    device.refresh_from_db()
    assert device.online and sum(bridge.rejected.values()) == 5

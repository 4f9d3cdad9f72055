"""A database that goes away under the bridge (a restart, a failover) loses none of the devices' messages.

The broker acknowledged them to the device when they arrived, so a presence
or reported state the bridge dropped would never come again: the worker holds
what the database refused and applies it, in order, once the database answers.
The bridge acknowledges each message to the broker only after that; what it
still holds when it stops stays the broker's.
"""

from __future__ import annotations

import queue
from collections.abc import Callable
from typing import Any
from unittest import mock

import pytest
from django.db import OperationalError

from bridge import process
from bridge.acks import ArrivalAcks
from bridge.process import Bridge
from fleet.models import Device, Site
from tests.bridge.helpers import offline_bridge, status, topic

# The worker drops a connection left inside a transaction (close_old_connections), as a test transaction is.
pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def device(site: Site, enroll_device: Callable[..., Any]) -> Device:
    return enroll_device(site).device


def refusing(times: int) -> Callable[..., bool]:
    """``Device.record_presence`` that raises as a closed connection does ``times`` times, then works."""
    real = Device.record_presence
    calls = {"n": 0}

    def record(self: Device, *args: Any, **kwargs: Any) -> bool:
        calls["n"] += 1
        if calls["n"] <= times:
            raise OperationalError("server closed the connection unexpectedly")
        return real(self, *args, **kwargs)

    return record


def drain(bridge: Bridge, *items: tuple[str, bytes]) -> list[int]:
    """Run one worker over ``items`` until its inbox ends (the None a stopping bridge queues).

    Returns the message ids (1, 2, ... in the order of ``items``) acknowledged to the broker, in order.
    """
    acked: list[int] = []
    bridge.acks = ArrivalAcks(lambda mid, qos: acked.append(mid))
    inbox: process._Inbox = queue.Queue()
    for mid, (topic_name, payload) in enumerate(items, start=1):
        inbox.put((topic_name, payload, bridge.acks.arrived(mid, 1)))
    inbox.put(None)
    bridge._drain(inbox)
    return acked


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(process, "_STORAGE_RETRY_S", (0.01, 0.01))


def test_a_status_the_database_refused_while_away_is_applied_once_it_answers(device: Device) -> None:
    bridge = offline_bridge()
    # Down for two checks, then back (the test database itself never leaves).
    answers = mock.patch.object(Bridge, "_database_answers", autospec=True, side_effect=[False, False, True])
    with answers as checked, mock.patch.object(Device, "record_presence", autospec=True, side_effect=refusing(1)):
        acked = drain(bridge, (topic(device.device_id, "status"), status("online")))
    assert checked.call_count == 3
    assert acked == [1]
    device.refresh_from_db()
    assert device.online
    assert bridge.accepted["status"] == 1


def test_a_message_the_database_keeps_refusing_while_answering_is_given_up_after_a_few_tries(device: Device) -> None:
    bridge = offline_bridge()
    answers = mock.patch.object(Bridge, "_database_answers", autospec=True, return_value=True)
    with answers, mock.patch.object(Device, "record_presence", autospec=True, side_effect=refusing(100)) as record:
        acked = drain(bridge, (topic(device.device_id, "status"), status("online")))
    # The first attempt, then one per retry: a bad row costs a few attempts, never the worker.
    assert record.call_count == 1 + process._STORAGE_RETRIES
    # Refused for good, so done with: the broker would only send it to the same end again.
    assert acked == [1]
    device.refresh_from_db()
    assert not device.online


def test_what_the_database_never_took_before_the_bridge_stopped_is_left_unacknowledged(device: Device) -> None:
    # The database stays away and the bridge is told to stop: the status it holds must stay the broker's,
    # to be delivered again (to this bridge's next start, or to another bridge), not acknowledged as done.
    bridge = offline_bridge()

    def away() -> bool:
        bridge._stopping.set()
        return False

    answers = mock.patch.object(Bridge, "_database_answers", autospec=True, side_effect=away)
    refused = mock.patch.object(Device, "record_presence", autospec=True, side_effect=refusing(1))
    with answers, refused:
        acked = drain(
            bridge,
            (topic(device.device_id, "status"), status("online")),
            (topic(device.device_id, "telemetry"), b"not json"),
        )
    device.refresh_from_db()
    assert not device.online
    # The second message was done with (refused as not_json) but waits behind the first, in arrival order.
    assert acked == [] and bridge.acks.waiting() == 2
    assert bridge.rejected["not_json"] == 1

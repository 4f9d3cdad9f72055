"""A database that goes away under the bridge (a restart, a failover) loses none of the devices' messages.

The broker acknowledged them to the device when they arrived, so a presence
or reported state the bridge dropped would never come again: the worker holds
what the database refused and applies it, in order, once the database answers.
"""

from __future__ import annotations

import queue
from collections.abc import Callable
from typing import Any
from unittest import mock

import pytest
from django.db import OperationalError

from bridge import process
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


def drain(bridge: Bridge, *items: tuple[str, bytes]) -> None:
    """Run one worker over ``items`` until its inbox ends (the None a stopping bridge queues)."""
    inbox: queue.Queue[tuple[str, bytes | bytearray] | None] = queue.Queue()
    for item in items:
        inbox.put(item)
    inbox.put(None)
    bridge._drain(inbox)


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(process, "_STORAGE_RETRY_S", (0.01, 0.01))


def test_a_status_the_database_refused_while_away_is_applied_once_it_answers(device: Device) -> None:
    bridge = offline_bridge()
    # Down for two checks, then back (the test database itself never leaves).
    answers = mock.patch.object(Bridge, "_database_answers", autospec=True, side_effect=[False, False, True])
    with answers as checked, mock.patch.object(Device, "record_presence", autospec=True, side_effect=refusing(1)):
        drain(bridge, (topic(device.device_id, "status"), status("online")))
    assert checked.call_count == 3
    device.refresh_from_db()
    assert device.online
    assert bridge.accepted["status"] == 1


def test_a_message_the_database_keeps_refusing_while_answering_is_given_up_after_a_few_tries(device: Device) -> None:
    bridge = offline_bridge()
    answers = mock.patch.object(Bridge, "_database_answers", autospec=True, return_value=True)
    with answers, mock.patch.object(Device, "record_presence", autospec=True, side_effect=refusing(100)) as record:
        drain(bridge, (topic(device.device_id, "status"), status("online")))
    # The first attempt, then one per retry: a bad row costs a few attempts, never the worker.
    assert record.call_count == 1 + process._STORAGE_RETRIES
    device.refresh_from_db()
    assert not device.online

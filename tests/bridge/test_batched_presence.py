"""Presence, reports and events of a batch are applied together, with the same outcome as one at a time.

After a reconnect storm a bridge's batches are hundreds of statuses and
reports: they are applied in one transaction, the devices' rows locked once
in pk order and written back in one statement. The outcome must be what
applying each message on its own (``Device.record_*``) gives, stale
statuses, older reports and repeated events included.
"""

from __future__ import annotations

import random
import threading
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from typing import Any
from unittest import mock

import pytest
from django.db import OperationalError, connection

from agent.kernel import protocol
from bridge.process import Bridge
from fleet.models import Device, DeviceQuerySet, Site
from telemetry.models import DeviceEvent
from tests.bridge.helpers import offline_bridge, topic

NOW = datetime(2026, 12, 5, 12, 0, tzinfo=dt_timezone.utc)
FIELDS = ("online", "last_seen", "status_changed_at", "agent_version", "reported")


def seed_devices(site: Site, rng: random.Random, count: int) -> list[str]:
    """Devices in every starting state: online or not, last status change before or after now, reports or none."""
    ids = []
    for i in range(count):
        changed = NOW + timedelta(minutes=rng.choice([-60, -1, 5])) if rng.random() < 0.8 else None
        reported = {"generation": rng.randint(0, 3), "ts": (NOW - timedelta(hours=1)).isoformat()}
        Device.objects.create(
            site=site,
            name=f"d{i}",
            device_id=f"dev-batch-{i:03d}",
            online=rng.random() < 0.5,
            status_changed_at=changed,
            last_seen=NOW - timedelta(minutes=rng.randint(1, 90)) if rng.random() < 0.7 else None,
            agent_version="0.0.9",
            reported=reported if rng.random() < 0.6 else {},
        )
        ids.append(f"dev-batch-{i:03d}")
    return ids


def messages(rng: random.Random, ids: list[str], count: int) -> list[tuple[str, bytes]]:
    out = []
    for _ in range(count):
        device_id = rng.choice(ids)
        kind = rng.choice(["status", "reported", "events"])
        message: protocol.Message
        if kind == "status":
            message = protocol.Status(
                state=rng.choice(["online", "offline"]), agent_version=rng.choice([None, "0.1.0", "0.2.0"])
            )
        elif kind == "reported":
            message = protocol.Reported(
                generation=rng.randint(0, 4),
                agent_version=rng.choice(["0.1.0", "0.2.0"]),
                phase=rng.choice(["active", "downloading", "failed"]),
                ts=NOW - timedelta(minutes=rng.randint(0, 120)),
            )
        else:
            # A few distinct events, so some arrive twice (MQTT delivers at least once).
            message = protocol.Event(kind="thermal_throttle", ts=NOW - timedelta(minutes=rng.randint(0, 3)))
        out.append((topic(device_id, kind), protocol.encode(message)))
    return out


def state(ids: list[str]) -> dict[str, Any]:
    rows = {d.device_id: tuple(getattr(d, f) for f in FIELDS) for d in Device.objects.filter(device_id__in=ids)}
    events = sorted(DeviceEvent.objects.filter(device__device_id__in=ids).values_list("device__device_id", "digest"))
    return {"devices": rows, "events": events}


def reset(site: Site) -> None:
    DeviceEvent.objects.all().delete()
    Device.objects.filter(site=site).delete()


@pytest.mark.django_db
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_batch_ends_as_each_message_applied_on_its_own_would(site: Site, seed: int) -> None:
    def run(batched: bool) -> tuple[dict[str, Any], list[str], dict[str, int]]:
        reset(site)
        rng = random.Random(seed)
        ids = seed_devices(site, rng, 12)
        items = messages(rng, ids, 300)
        bridge = offline_bridge()
        with mock.patch("django.utils.timezone.now", return_value=NOW):
            verdicts = bridge.handle_many(items) if batched else [bridge.handle(*item) for item in items]
        return state(ids), verdicts, dict(bridge.accepted)

    alone = run(batched=False)
    together = run(batched=True)
    assert together == alone
    assert set(together[1]) == {"ok"}


@pytest.mark.django_db
def test_a_batch_the_database_refuses_as_a_whole_is_applied_one_message_at_a_time(
    site: Site, caplog: pytest.LogCaptureFixture
) -> None:
    ids = seed_devices(site, random.Random(7), 3)
    Device.objects.filter(device_id__in=ids).update(online=False, status_changed_at=None)
    bridge = offline_bridge()
    items = [(topic(d, "status"), protocol.encode(protocol.Status(state="online"))) for d in ids]
    refused = mock.patch.object(
        DeviceQuerySet, "save_liveness", autospec=True, side_effect=OperationalError("deadlock detected")
    )
    with refused as save:
        assert bridge.handle_many(items) == ["ok"] * 3
    assert save.call_count == 1
    assert "applying them one at a time" in caplog.text
    assert all(Device.objects.filter(device_id__in=ids).values_list("online", flat=True))
    assert bridge.accepted["status"] == 3


@pytest.mark.django_db(transaction=True)
def test_two_bridges_applying_the_same_devices_in_opposite_orders_never_deadlock(site: Site) -> None:
    # With a shared subscription any bridge may get any device's messages. Rows taken one message at a
    # time inside one transaction would be taken in opposite orders here and deadlock; lock_liveness
    # takes them all at once in pk order, so one bridge waits for the other.
    if connection.vendor != "postgresql":
        pytest.skip("row locks need PostgreSQL")
    ids = seed_devices(site, random.Random(11), 40)
    failures: list[str] = []
    start = threading.Barrier(2)

    def apply(order: list[str], rounds: int) -> None:
        bridge = offline_bridge()
        try:
            start.wait()
            for n in range(rounds):
                state_name = "online" if n % 2 else "offline"
                batch = [(topic(d, "status"), protocol.encode(protocol.Status(state=state_name))) for d in order]
                batch += [(topic(d, "reported"), reported(n)) for d in order]
                verdicts = bridge.handle_many(batch)
                failures.extend(v for v in verdicts if v != "ok")
            if bridge.rejected:
                failures.append(str(dict(bridge.rejected)))
        finally:
            connection.close()

    threads = [
        threading.Thread(target=apply, args=(ids, 15)),
        threading.Thread(target=apply, args=(list(reversed(ids)), 15)),
    ]
    with mock.patch.object(Bridge, "_apply", autospec=True, side_effect=AssertionError("fell back")) as alone:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads)
    assert failures == []
    assert alone.call_count == 0
    assert Device.objects.filter(device_id__in=ids, reported__generation=14).count() == 40


def reported(generation: int) -> bytes:
    return protocol.encode(protocol.Reported(generation=generation, agent_version="0.2.0", phase="active"))

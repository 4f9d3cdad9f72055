"""Storing telemetry in batches: redelivery and reordering change nothing, and acks never pass a gap."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from datetime import timedelta
from typing import Any
from unittest import mock

import pytest
from django.db import DatabaseError, transaction
from django.utils import timezone

from agent.kernel import protocol
from bridge.process import Bridge
from fleet.models import Device, DeviceQuerySet, Site
from telemetry import ingest
from telemetry.models import BridgeStats, TelemetryRecord, WindowRollup
from tests.bridge.helpers import offline_bridge, published
from tests.telemetry.factories import Feed, batch, roll_up_everything, store

pytestmark = pytest.mark.django_db


@pytest.fixture
def devices(site: Site, enroll_device: Callable[..., Any]) -> list[Device]:
    return [enroll_device(site, name=f"cam-{i}").device for i in range(2)]


def stored_state(devices: list[Device]) -> dict[str, Any]:
    """Everything a reader sees: raw records, acks, and the rollups built from them."""
    roll_up_everything()
    records = sorted(TelemetryRecord.objects.values_list("device__device_id", "seq", "kind", "data"), key=str)
    acks = sorted(Device.objects.filter(pk__in=[d.pk for d in devices]).values_list("device_id", "telemetry_acked_seq"))
    rollups = sorted(
        WindowRollup.objects.values_list(
            "resolution", "scope", "key", "bucket", "frames", "errors", "latency", "confidence", "classes"
        ),
        key=str,
    )
    return {"records": records, "acks": acks, "rollups": rollups}


def make_batches(devices: list[Device]) -> list[ingest.Received]:
    rng = random.Random(7)
    start = timezone.now().replace(second=0, microsecond=0) - timedelta(minutes=10)
    out = []
    for device in devices:
        feed = Feed(device)
        records = feed.windows(start, minutes=5, rng=rng, frames=20)
        records.append(feed.heartbeat(start + timedelta(minutes=5)))
        out += [ingest.Received(device, batch(*records[i : i + 4])) for i in range(0, len(records), 4)]
    return out


def test_redelivered_and_reordered_batches_store_the_same_state_as_a_clean_run(devices: list[Device]) -> None:
    batches = make_batches(devices)
    ingest.store_batches(batches)
    clean = stored_state(devices)
    TelemetryRecord.objects.all().delete()
    WindowRollup.objects.all().delete()
    Device.objects.update(telemetry_acked_seq=0)
    for device in devices:
        device.telemetry_acked_seq = 0

    rng = random.Random(3)
    messy = batches + rng.sample(batches, k=len(batches) // 2)  # every batch, half of them twice
    rng.shuffle(messy)
    for start in range(0, len(messy), 5):
        fresh = [ingest.Received(Device.objects.get(pk=d.pk), b) for d, b in messy[start : start + 5]]
        ingest.store_batches(fresh)
        roll_up_everything()  # rollups computed midway are recomputed, not added to
    assert stored_state(devices) == clean


def test_the_ack_covers_only_contiguous_records_across_several_devices(devices: list[Device]) -> None:
    first, second = devices
    feed = Feed(first)
    now = timezone.now()
    records = [feed.heartbeat(now) for _ in range(5)]
    stored = ingest.store_batches(
        [
            ingest.Received(first, batch(*records[:2])),
            ingest.Received(second, batch(*Feed(second).windows(now, 1, random.Random(1)))),
            ingest.Received(first, batch(records[4])),
        ]
    )
    assert stored.acks == {first.pk: 2, second.pk: 6}
    assert store(first, batch(records[2], records[3])) == 5


def test_a_late_redelivery_below_the_ack_is_not_stored_again(devices: list[Device]) -> None:
    device = devices[0]
    feed = Feed(device)
    old = feed.heartbeat(timezone.now() - timedelta(days=30))
    store(device, batch(old))
    TelemetryRecord.objects.all().delete()  # aged out by retention
    assert store(device, batch(old)) == 1
    assert not TelemetryRecord.objects.exists()


@pytest.fixture
def bridge() -> Bridge:
    return offline_bridge()


def payload(records: list[protocol.TelemetryRecord]) -> bytes:
    return protocol.encode(batch(*records))


def test_the_bridge_stores_a_drained_queue_together_and_acks_each_device_once(
    bridge: Bridge, devices: list[Device]
) -> None:
    now = timezone.now()
    feeds = [Feed(d) for d in devices]
    items = []
    for _ in range(3):
        for feed in feeds:
            items.append((protocol.topic(feed.device.device_id, "telemetry"), payload([feed.heartbeat(now)])))
    items.append((protocol.topic(devices[0].device_id, "telemetry"), b'{"v":1,"type":"telemetry","records":[]}'))
    items.append((protocol.topic("dev-unknown", "telemetry"), payload([feeds[0].heartbeat(now)])))
    bridge.handle_many(items)

    acks = [(c.args[0].split("/")[2], json.loads(c.args[1])["seq"]) for c in bridge.client.publish.call_args_list]
    assert sorted(acks) == sorted([(devices[0].device_id, 3), (devices[1].device_id, 3)])
    assert TelemetryRecord.objects.count() == 6
    assert bridge.accepted["telemetry"] == 6 and bridge.records == 6 and bridge.batches == 1
    assert bridge.rejected == {"schema": 1, "unknown_device": 1}
    assert Device.objects.filter(online=True).count() == 2


def test_a_failing_batch_is_stored_one_message_at_a_time_so_only_the_culprit_is_refused(
    bridge: Bridge, devices: list[Device]
) -> None:
    good, bad = devices
    real = ingest.store_batches

    def refuse_bad(batches: list[ingest.Received], seen_at: Any = None) -> ingest.Stored:
        if any(item.device.pk == bad.pk for item in batches):
            raise DatabaseError("boom")
        return real(batches, seen_at=seen_at)

    items = [
        (protocol.topic(d.device_id, "telemetry"), payload([Feed(d).heartbeat(timezone.now())])) for d in (bad, good)
    ]
    with mock.patch("telemetry.services.store_batches", autospec=True, side_effect=refuse_bad):
        assert bridge.handle_many(items) == ["storage_error", "ok"]
    assert list(TelemetryRecord.objects.values_list("device_id", flat=True)) == [good.pk]
    assert published(bridge, "ack") == [(good.device_id, {"v": 1, "type": "ack", "seq": 1})]
    assert bridge.accepted["telemetry"] == 1 and bridge.rejected == {"storage_error": 1}


def test_a_retry_after_a_failed_batch_trusts_nothing_the_failed_attempt_left_in_memory(
    bridge: Bridge, devices: list[Device]
) -> None:
    # The batch fails after its watermarks moved on the device objects; were
    # the retry to use them, it would skip the records and acknowledge them unstored.
    real = DeviceQuerySet.touch_seen_bulk
    calls = []

    def fail_first(queryset: DeviceQuerySet, batch: Any, seen_at: Any) -> None:
        calls.append(len(batch))
        if len(calls) == 1:
            raise DatabaseError("boom")
        real(queryset, batch, seen_at)

    feeds = [Feed(d) for d in devices]
    items = [(protocol.topic(f.device.device_id, "telemetry"), payload([f.heartbeat(timezone.now())])) for f in feeds]
    with mock.patch.object(DeviceQuerySet, "touch_seen_bulk", autospec=True, side_effect=fail_first):
        assert bridge.handle_many(items) == ["ok", "ok"]
    assert calls == [2, 1, 1]
    assert sorted(TelemetryRecord.objects.values_list("device_id", "seq")) == sorted((d.pk, 1) for d in devices)
    assert sorted(published(bridge, "ack")) == sorted((d.device_id, {"v": 1, "type": "ack", "seq": 1}) for d in devices)
    assert sorted(Device.objects.values_list("telemetry_acked_seq", flat=True)) == [1, 1]


def test_the_bridge_exports_its_counters_for_the_web_process(bridge: Bridge, devices: list[Device]) -> None:
    feed = Feed(devices[0])
    bridge.handle_many([(protocol.topic(devices[0].device_id, "telemetry"), payload([feed.heartbeat(timezone.now())]))])
    bridge.handle_many([(protocol.topic(devices[0].device_id, "telemetry"), b"not json")])
    bridge.export_stats()
    stats = BridgeStats.objects.get(bridge_id=bridge.client_id)
    assert stats.counters["records"] == 1 and stats.counters["rejected"] == {"not_json": 1}
    assert sum(stats.counters["lag_buckets"].values()) == 1


def test_each_devices_messages_go_to_one_worker_so_they_stay_in_order() -> None:
    bridge = offline_bridge(workers=3)
    for device in ("dev-a", "dev-b", "dev-c", "dev-d"):
        for suffix in ("status", "telemetry", "reported", "status"):
            message = mock.Mock(topic=protocol.topic(device, suffix), payload=suffix.encode())
            bridge._on_message(bridge.client, None, message)
    for inbox in bridge._inboxes:
        queued = []
        while not inbox.empty():
            item = inbox.get_nowait()
            assert item is not None
            queued.append((item[0].split("/")[2], item[1]))
        for device in {d for d, _ in queued}:
            assert [p for d, p in queued if d == device] == [b"status", b"telemetry", b"reported", b"status"]


def test_record_data_comes_back_exactly_as_sent(devices: list[Device]) -> None:
    device = devices[0]
    data = {"name": "caméra 北", "nested": [{"a": [1, 2.5, None, True]}], "big": 2**63 - 1, "tiny": 1e-300}
    record = protocol.TelemetryRecord(seq=1, kind="window", ts=timezone.now(), data=data)
    assert store(device, batch(record)) == 1
    assert TelemetryRecord.objects.get(device=device, seq=1).data == data


def test_nothing_staged_for_one_batch_reaches_the_next_in_the_same_transaction(devices: list[Device]) -> None:
    device = devices[0]
    feed = Feed(device)
    now = timezone.now()
    with transaction.atomic():
        store(device, batch(feed.heartbeat(now), feed.heartbeat(now)))
        TelemetryRecord.objects.all().delete()  # aged out, say, before the next batch
        store(device, batch(feed.heartbeat(now)))
    assert list(TelemetryRecord.objects.values_list("seq", flat=True)) == [3]

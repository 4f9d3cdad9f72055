"""Two bridges share a device's messages (one shared subscription): their transactions lock devices in one order.

A batch takes its devices' rows in pk order, in one statement, so two bridges
storing telemetry of the same devices queue instead of deadlocking. A device
the batch brings online is no exception: the scale-out test caught two bridges
deadlocked on the first telemetry of freshly enrolled (offline) devices.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import psycopg
import pytest
from django.db import connection

from fleet.models import Device, Site
from telemetry.models import TelemetryRecord
from tests.bridge.helpers import offline_bridge, telemetry, topic

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def other_bridge() -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    """A second database session, standing for another bridge's transaction."""
    settings = connection.settings_dict
    with psycopg.connect(
        dbname=settings["NAME"],
        host=settings["HOST"] or None,
        port=settings["PORT"] or None,
        user=settings["USER"] or None,
        password=settings["PASSWORD"] or None,
    ) as session:
        yield session


def waiting_on_a_lock(session: psycopg.Connection[tuple[object, ...]]) -> bool:
    row = session.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
    ).fetchone()
    return bool(row and row[0])


def test_a_batch_that_brings_a_device_online_holds_no_device_lock_out_of_order(
    other_bridge: psycopg.Connection[tuple[object, ...]],
) -> None:
    site = Site.objects.create(slug="plant", name="Plant")
    low = Device.objects.create(site=site, name="low", device_id="dev-low", online=True)
    offline = Device.objects.create(site=site, name="offline", device_id="dev-offline", online=False)
    assert low.pk < offline.pk
    bridge = offline_bridge()
    verdicts: list[str] = []

    def store() -> None:
        try:
            verdicts.extend(
                bridge.handle_many([(topic(d, "telemetry"), telemetry(1)) for d in ("dev-low", "dev-offline")])
            )
        finally:
            connection.close()

    # The other bridge holds the lower device and is about to take the offline one (pk order).
    watcher = psycopg.connect(other_bridge.info.dsn, autocommit=True)
    other_bridge.execute("SELECT 1 FROM fleet_device WHERE id = %s FOR NO KEY UPDATE", [low.pk])
    thread = threading.Thread(target=store)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not waiting_on_a_lock(watcher):
            assert time.monotonic() < deadline, "the bridge never waited for the lower device"
            time.sleep(0.02)
        # Shorter than PostgreSQL's deadlock_timeout: a bridge holding the offline
        # device while it waits would fail this, not be aborted by the detector.
        other_bridge.execute("SET LOCAL lock_timeout = '500ms'")
        other_bridge.execute("SELECT 1 FROM fleet_device WHERE id = %s FOR NO KEY UPDATE", [offline.pk])
        other_bridge.commit()
    finally:
        if other_bridge.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            other_bridge.rollback()
        thread.join(20)
        watcher.close()

    assert verdicts == ["ok", "ok"]
    assert TelemetryRecord.objects.count() == 2
    offline.refresh_from_db()
    assert offline.online and offline.telemetry_acked_seq == 1

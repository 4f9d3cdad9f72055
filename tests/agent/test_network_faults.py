"""The link between a real agent and its broker goes bad in the ways real links do, then heals.

A fault proxy (``tests/faultproxy.py``) sits between the agent and a private
Mosquitto that the real bridge reads from: delay with jitter, a half-open link
(nothing forwarded, no connection closed: only the MQTT keepalive can notice),
and a link that is down (connections cut and refused). After each fault heals
the agent must reconnect within 60 s, and every record it wrote, before,
during and after, must be stored once, in order, with the outbox drained.

The CI run keeps each fault to seconds; ``make chaos`` runs minutes-long ones.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent import config as agent_config
from agent import outbox
from fleet.models import Device
from telemetry.models import TelemetryRecord
from tests.agent.conftest import AgentProcess, wait_until
from tests.agent.test_outage import PrivateBroker, broker, poll, start_bridge  # noqa: F401 - the broker fixture
from tests.faultproxy import BLACKHOLE, DOWN, PASS, FaultProxy

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

KEEPALIVE_S = 5
HEALED_WITHIN_S = 60
SHORT = {"jitter": 4.0, "half_open": 3 * KEEPALIVE_S, "down": 6.0, "cycles": 1}
LONG = {"jitter": 60.0, "half_open": 120.0, "down": 180.0, "cycles": 3}


@pytest.fixture
def proxy(broker: PrivateBroker) -> Iterator[FaultProxy]:  # noqa: F811
    proxy = FaultProxy("127.0.0.1", broker.port, seed=7)
    yield proxy
    proxy.close()


def stats(data: Path) -> outbox.OutboxStats:
    found = outbox.inspect(data / "outbox.db")
    return found if found is not None else outbox.OutboxStats(0, 0, 0, 0, 0, 0, None)


def run_faults(
    proxy: FaultProxy,
    broker: PrivateBroker,  # noqa: F811
    device: tuple[Device, str],
    tmp_path: Path,
    make_config: Any,
    plan: dict[str, float],
) -> None:
    data = tmp_path / "data"
    path = tmp_path / "agent.toml"
    agent_config.write(
        path,
        make_config(
            mqtt_url=proxy.url,
            device_id=device[0].device_id,
            secret=device[1],
            mqtt={"reconnect_min_s": 1, "reconnect_max_s": 2, "keepalive": KEEPALIVE_S},
            agent={"heartbeat_interval_s": 1},
            logging={"level": "debug"},
            # A record sent into a link that then died is sent again after this long without its ack.
            outbox={"resend_after_s": 5},
        ),
    )
    bridge = start_bridge(broker.url)
    agent = AgentProcess(path, tmp_path / "agent.log")
    try:
        assert wait_until(lambda: stats(data).acked_seq >= 2, bridge), agent.log()
        for _ in range(int(plan["cycles"])):
            # Delay and jitter: slow, out of step, but records keep arriving.
            proxy.set(PASS, delay_s=0.3, jitter_s=0.25)
            before = stats(data).acked_seq
            assert wait_until(lambda b=before: stats(data).acked_seq >= b + 2, bridge, timeout=plan["jitter"] + 30)
            time.sleep(plan["jitter"])

            # Half-open: nothing moves and nothing closes; the keepalive must notice.
            connections = proxy.counters.accepted
            proxy.set(BLACKHOLE)
            time.sleep(plan["half_open"])
            proxy.set(DOWN)
            time.sleep(plan["down"])
            written = stats(data).last_seq
            assert written > before, "the agent kept writing while its link was broken"

            healed = time.monotonic()
            proxy.set(PASS)
            assert poll(lambda c=connections: proxy.counters.accepted > c, timeout=HEALED_WITHIN_S), agent.log()
            reconnected_after = proxy.counters.connections[-1] - healed
            assert reconnected_after < HEALED_WITHIN_S
            # The backlog drains: everything written during the fault is acknowledged.
            assert wait_until(lambda w=written: stats(data).acked_seq >= w, bridge, timeout=60), agent.log()
        assert wait_until(lambda: stats(data).depth <= 1, bridge, timeout=30), agent.log()
        last = stats(data).acked_seq
        stored = list(
            TelemetryRecord.objects.filter(device=device[0], seq__lte=last)
            .order_by("seq")
            .values_list("seq", flat=True)
        )
        assert stored == list(range(1, last + 1)), "every record written is stored once and in order"
        assert stats(data).dropped_total == 0, "nothing was dropped: the outbox bound was never reached"
        assert agent.proc.poll() is None, "the agent ran through every fault"
    finally:
        agent.close()
        bridge.stop()


def test_an_agent_rides_out_jitter_a_half_open_link_and_a_dead_one_and_loses_nothing(
    proxy: FaultProxy,
    broker: PrivateBroker,  # noqa: F811
    device: tuple[Device, str],
    tmp_path: Path,
    agent_config_factory: Any,
) -> None:
    run_faults(proxy, broker, device, tmp_path, agent_config_factory, SHORT)
    assert proxy.counters.cut >= 1 and proxy.counters.refused + proxy.counters.accepted >= 2


@pytest.mark.chaos
@pytest.mark.timeout(3600)
def test_minutes_long_faults_three_times_over(
    proxy: FaultProxy,
    broker: PrivateBroker,  # noqa: F811
    device: tuple[Device, str],
    tmp_path: Path,
    agent_config_factory: Any,
) -> None:
    run_faults(proxy, broker, device, tmp_path, agent_config_factory, LONG)

"""The embedded broker forwards every message while clients come and go (amqtt 0.12's iteration race)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator

import pytest

from tests.brokers import RunningBroker, embedded_broker
from tests.fleet.broker.clients import Probe

pytestmark = pytest.mark.integration

MESSAGES = 200
RECEIVERS = 8
CHURNERS = 4
TOPIC = "race/data"


@pytest.fixture
def broker() -> Iterator[RunningBroker]:
    # Anonymous: the race is in amqtt's broadcast loop, not in our plugins' checks.
    with embedded_broker(allow_anonymous=True, recheck_s=60) as running:
        yield running


def churn(url: str, worker: int, stop: threading.Event, rounds: list[int]) -> None:
    """Connect, subscribe to filters nobody else holds, leave: the broker's table grows and shrinks."""
    round_no = 0
    while not stop.is_set():
        probe = Probe(url, None, None, client_id=f"churn-{worker}-{round_no}")
        try:
            probe.connect()
            for level in range(3):
                probe.subscribe(f"churn/{worker}/{round_no}/{level}")
        finally:
            probe.close()
        round_no += 1
    rounds.append(round_no)


def test_every_subscriber_gets_every_message_while_others_connect_and_subscribe(
    broker: RunningBroker, probes: list[Probe], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    receivers: list[Probe] = []
    for n in range(RECEIVERS):
        receiver = Probe(broker.url, None, None, client_id=f"receiver-{n}")
        probes.append(receiver)
        receivers.append(receiver)
        assert not receiver.connect().is_failure
        # Several matching filters each: every broadcast awaits the topic check once per holder.
        for topic_filter in (TOPIC, "race/+", "race/#"):
            assert not receiver.subscribe(topic_filter).is_failure
    sender = Probe(broker.url, None, None, client_id="sender")
    probes.append(sender)
    assert not sender.connect().is_failure

    stop = threading.Event()
    rounds: list[int] = []
    churners = [
        threading.Thread(target=churn, args=(broker.url, n, stop, rounds), daemon=True) for n in range(CHURNERS)
    ]
    for thread in churners:
        thread.start()
    try:
        for n in range(MESSAGES):
            sender.publish(TOPIC, str(n).encode())
    finally:
        stop.set()
        for thread in churners:
            thread.join(30)
    assert sum(rounds) >= CHURNERS, "the churners did not get to run while messages were sent"

    expected = sorted(str(n).encode() for n in range(MESSAGES)) * 3
    for n, receiver in enumerate(receivers):
        receiver.wait(lambda r=receiver: len(r.received(TOPIC)) >= len(expected))
        got = sorted(receiver.received(TOPIC))
        assert got == sorted(expected), f"receiver-{n} got {len(got)} of {len(expected)}"
    errors = [r.getMessage() for r in caplog.records if "changed size during iteration" in r.getMessage()]
    errors += [r.getMessage() for r in caplog.records if r.exc_info and "RuntimeError" in repr(r.exc_info[1])]
    assert errors == []

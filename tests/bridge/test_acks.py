"""Acknowledgements go to the broker once a message is done with, in the order the messages arrived."""

from __future__ import annotations

import random
import threading

from bridge.acks import ArrivalAcks


class Broker:
    """What the bridge's paho client was asked to acknowledge, in order."""

    def __init__(self) -> None:
        self.acked: list[tuple[int, int]] = []

    def ack(self, mid: int, qos: int) -> None:
        self.acked.append((mid, qos))


def test_a_message_done_before_an_earlier_one_waits_for_it() -> None:
    broker = Broker()
    acks = ArrivalAcks(broker.ack)
    first, second, third = (acks.arrived(mid, 1) for mid in (7, 8, 9))
    assert acks.done(third) == 0 and acks.done(second) == 0
    assert broker.acked == [] and acks.waiting() == 3
    assert acks.done(first) == 3
    assert broker.acked == [(7, 1), (8, 1), (9, 1)] and acks.waiting() == 0


def test_qos_0_has_nothing_to_acknowledge_and_holds_nothing_up() -> None:
    broker = Broker()
    acks = ArrivalAcks(broker.ack)
    assert acks.arrived(1, 0) is None
    pending = acks.arrived(2, 1)
    assert acks.done(None) == 0
    assert acks.done(pending) == 1 and broker.acked == [(2, 1)]


def test_what_waits_when_the_connection_ends_is_never_acknowledged() -> None:
    # Its message id may name another message on the next connection: acknowledging it there would
    # tell the broker a message arrived that the bridge never saw.
    broker = Broker()
    acks = ArrivalAcks(broker.ack)
    old = [acks.arrived(mid, 1) for mid in (1, 2)]
    assert acks.new_connection() == 2
    fresh = acks.arrived(1, 1)
    for pending in old:
        acks.done(pending)
    assert broker.acked == []
    acks.done(fresh)
    assert broker.acked == [(1, 1)]


def test_workers_finishing_in_any_order_acknowledge_in_arrival_order() -> None:
    broker = Broker()
    acks = ArrivalAcks(broker.ack)
    arrived = [acks.arrived(mid, 1) for mid in range(1, 2001)]
    shares = [arrived[i::4] for i in range(4)]
    for share in shares:
        random.Random(len(share)).shuffle(share)
    start = threading.Barrier(len(shares))

    def finish(share: list[object]) -> None:
        start.wait()
        for pending in share:
            acks.done(pending)  # type: ignore[arg-type]

    threads = [threading.Thread(target=finish, args=(share,)) for share in shares]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert broker.acked == [(mid, 1) for mid in range(1, 2001)]

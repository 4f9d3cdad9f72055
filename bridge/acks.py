"""Acknowledge a device message to the broker only once the bridge is done with it, in arrival order.

paho acknowledges a QoS 1 message as soon as ``on_message`` returns, that
is, once the bridge has queued it: a bridge killed with messages in its
inbox loses them although the broker had been told they arrived. A bridge
with a persistent session (``BRIDGE_CLIENT_ID``) runs paho with
``manual_ack`` and sends each PUBACK itself, after the message was stored
(or refused for good), so a message not yet stored is still the broker's:
it goes again to the bridge when it resumes its session. Without
``manual_ack`` the bridge tracks nothing here.

MQTT 3.1.1 (4.6) wants PUBACKs in the order the PUBLISH packets arrived,
while the bridge's workers finish in any order: a finished message waits
here until everything that arrived before it is finished too. How many
wait is bounded by the broker's in-flight window for the bridge.

A message id names a message on one connection only: after the broker
drops the bridge, an id from before could name another message on the new
connection, so everything still waiting is forgotten (``new_connection``)
and never acknowledged. The broker sends those messages again to a
resumed session, and the bridge stores them idempotently.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable

Ack = Callable[[int, int], object]
"""``paho.mqtt.client.Client.ack``: (message id, QoS)."""


class Pending:
    """One message awaiting its acknowledgement; what a worker hands back to ``ArrivalAcks.done``."""

    __slots__ = ("finished", "mid", "qos")

    def __init__(self, mid: int, qos: int) -> None:
        self.mid = mid
        self.qos = qos
        self.finished = False


class ArrivalAcks:
    """Sends each acknowledgement once its message and every earlier one are done; safe across threads."""

    def __init__(self, ack: Ack) -> None:
        self._ack = ack
        self._lock = threading.Lock()
        self._waiting: deque[Pending] = deque()

    def arrived(self, mid: int, qos: int) -> Pending | None:
        """Note a message as it arrives (paho's network thread); ``None`` for QoS 0, which has no ack."""
        if qos == 0:
            return None
        pending = Pending(mid, qos)
        with self._lock:
            self._waiting.append(pending)
        return pending

    def done(self, pending: Pending | None) -> int:
        """The bridge is finished with this message; returns how many acknowledgements went out."""
        if pending is None:
            return 0
        with self._lock:
            pending.finished = True
            sent = 0
            # Under the lock: two workers releasing at once must not send out of order.
            while self._waiting and self._waiting[0].finished:
                head = self._waiting.popleft()
                self._ack(head.mid, head.qos)
                sent += 1
            return sent

    def new_connection(self) -> int:
        """Forget what waits (the connection it arrived on is gone); returns how many were forgotten."""
        with self._lock:
            forgotten = len(self._waiting)
            self._waiting.clear()
            return forgotten

    def waiting(self) -> int:
        with self._lock:
            return len(self._waiting)

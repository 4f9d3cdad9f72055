"""A full inbox makes paho's network thread wait for room, up to ``full_wait_s``, before it drops.

Ten thousand simulated devices reconnecting at once (bench/fleet_scale.py)
filled the bridge's inbox, and it dropped 18,510 messages at once, the
devices' ``reported`` among them, which nothing sends again until the
device's next report. paho acknowledges a QoS 1 message only when
``on_message`` returns, so waiting there holds the broker's in-flight window
and the broker queues the rest.
"""

from __future__ import annotations

import threading

import paho.mqtt.client as mqtt

from tests.bridge.helpers import offline_bridge


def arrived(bridge: object, topic: str) -> threading.Thread:
    message = mqtt.MQTTMessage(topic=topic.encode())
    message.payload = b"{}"
    thread = threading.Thread(target=bridge._on_message, args=(None, None, message))  # type: ignore[attr-defined]
    thread.start()
    return thread


def test_a_message_waits_for_room_instead_of_being_dropped() -> None:
    bridge = offline_bridge(queue_size=1, workers=1, full_wait_s=30)
    inbox = bridge._inboxes[0]
    arrived(bridge, "edgefleet/v1/dev-a/reported").join(5)
    waiting = arrived(bridge, "edgefleet/v1/dev-b/reported")
    waiting.join(0.2)
    assert waiting.is_alive(), "the second message was dropped or queued past a full inbox"
    # A worker takes the first: the second goes in, in order, and nothing was dropped.
    assert inbox.get(timeout=5)[0] == "edgefleet/v1/dev-a/reported"
    waiting.join(5)
    assert not waiting.is_alive()
    assert inbox.get(timeout=5)[0] == "edgefleet/v1/dev-b/reported"
    assert bridge.rejected["overloaded"] == 0


def test_a_message_is_dropped_and_counted_once_the_wait_is_over() -> None:
    bridge = offline_bridge(queue_size=1, workers=1, full_wait_s=0.05)
    arrived(bridge, "edgefleet/v1/dev-a/telemetry").join(5)
    arrived(bridge, "edgefleet/v1/dev-b/telemetry").join(5)
    assert bridge.rejected["overloaded"] == 1
    assert bridge._inboxes[0].qsize() == 1

"""The topic rule every broker enforces, in one place (DESIGN.md, "MQTT protocol v1").

A device may publish only to its own device-to-cloud topics and subscribe
only to its own cloud-to-device topics, named exactly: no wildcards, so a
device can never match another device's topic. The bridge account may touch
every device, directly or through a shared subscription. Both the dynamic-
security provisioner and the embedded broker read these lists, so the two
brokers cannot drift apart.
"""

from __future__ import annotations

from agent.kernel import protocol

# What the bridge may publish to and subscribe to, as MQTT topic filters.
BRIDGE_FILTERS = (f"{protocol.TOPIC_ROOT}/#",)
# Shared subscriptions name the group in front of the filter.
BRIDGE_SHARED_FILTERS = tuple(f"$share/+/{f}" for f in BRIDGE_FILTERS)


def device_publish_topics(device_id: str) -> tuple[str, ...]:
    return tuple(protocol.topic(device_id, suffix) for suffix in protocol.DEVICE_TO_CLOUD)


def device_subscribe_topics(device_id: str) -> tuple[str, ...]:
    return tuple(protocol.topic(device_id, suffix) for suffix in protocol.CLOUD_TO_DEVICE)


def matches(topic_filter: str, topic: str) -> bool:
    """MQTT filter matching (``+`` one level, ``#`` the rest), for topics and for filters.

    When ``topic`` is itself a filter (a subscription request), a wildcard in
    it only matches the same wildcard in ``topic_filter``: asking for
    ``edgefleet/v1/+/desired`` is not covered by a grant of one device's topic.
    """
    want = topic_filter.split("/")
    have = topic.split("/")
    for index, level in enumerate(want):
        if level == "#":
            return True
        if index >= len(have):
            return False
        if level == "+":
            if have[index] == "#":
                return False
            continue
        if level != have[index]:
            return False
    return len(want) == len(have)


def bridge_may(topic: str) -> bool:
    """Whether the bridge may publish, subscribe to or receive ``topic``."""
    return any(matches(f, topic) for f in BRIDGE_FILTERS + BRIDGE_SHARED_FILTERS)


def device_may_publish(device_id: str, topic: str) -> bool:
    return topic in device_publish_topics(device_id)


def device_may_subscribe(device_id: str, topic_filter: str) -> bool:
    return topic_filter in device_subscribe_topics(device_id)

"""The bridge signs every desired document it publishes, so a broker cannot push a downgrade."""

from __future__ import annotations

from unittest import mock

import paho.mqtt.client as mqtt
import pytest

from agent.kernel import protocol, verify
from bridge.process import Bridge, BridgeConfig
from fleet import desired
from registry.trust import trust_store
from tests.bridge.helpers import message_info

pytestmark = pytest.mark.django_db


def test_the_bridge_publishes_desired_state_a_device_can_verify(enroll_device, site):
    enrolled = enroll_device(site)
    model = {
        "name": "parts",
        "version": "1.2.0",
        "sequence": 3,
        "target": "cpu-fp32",
        "bundle_url": "/api/v1/bundles/1/download",
        "sha256": "a" * 64,
        "size": 2048,
        "manifest_sha256": "b" * 64,
    }
    desired.issue(enrolled.device, {"model": model, "config": {"escalation_threshold": 0.9}})
    bridge = Bridge(BridgeConfig(url="mqtt://127.0.0.1:1"))
    sent = []

    def capture(device_id, suffix, message, *, retain=False):
        sent.append(message)
        return message_info(mqtt.MQTT_ERR_SUCCESS, published=True)

    with mock.patch.object(bridge.desired, "_publish", side_effect=capture):
        assert bridge.desired.publish_pending() == 1

    received = protocol.decode("desired", protocol.encode(sent[0]))
    keyring = verify.Keyring.from_trust_store(enrolled.trust_store)
    assert verify.verify_desired(received, keyring).key_id == trust_store()[0]["key_id"]
    assert received.model is not None and received.model.model_dump() == model
    assert received.config.escalation_threshold == 0.9

"""The run loop in-process against the real broker, with a stand-in cloud: overflow, commands, desired."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from agent.kernel import protocol
from agent.runtime import Runtime
from registry.bundles import Signer
from tests.agent.conftest import sign, trusted
from tests.agent.helpers import desired_doc
from tests.brokers import address

pytestmark = pytest.mark.integration


class Cloud:
    """Plays the control plane's side of one device's topics with plain paho."""

    def __init__(self, device_id: str, url: str) -> None:
        self.device_id = device_id
        self.received: list[tuple[str, dict[str, Any]]] = []
        self.arrived = threading.Condition()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"cloud-{uuid.uuid4().hex[:8]}")
        self.client.on_message = self._on_message
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *_args: subscribed.set()
        self.client.connect(*address(url))
        self.client.loop_start()
        self.client.subscribe([(protocol.topic(device_id, s), 1) for s in ("events", "reported", "status")])
        assert subscribed.wait(10)

    def _on_message(self, client: Any, userdata: Any, message: mqtt.MQTTMessage) -> None:
        if not message.payload:
            return
        with self.arrived:
            self.received.append((message.topic.rsplit("/", 1)[1], json.loads(message.payload)))
            self.arrived.notify_all()

    def send(self, suffix: str, message: Any) -> None:
        self.client.publish(protocol.topic(self.device_id, suffix), protocol.encode(message), qos=1).wait_for_publish(5)

    def wait_for(self, predicate: Callable[[list[tuple[str, dict[str, Any]]]], bool], timeout: float = 20) -> bool:
        with self.arrived:
            return self.arrived.wait_for(lambda: predicate(self.received), timeout)

    def of(self, suffix: str) -> list[dict[str, Any]]:
        with self.arrived:
            return [m for s, m in self.received if s == suffix]

    def close(self) -> None:
        # Leave the shared broker as found: no retained presence for this made-up device.
        self.client.publish(protocol.topic(self.device_id, "status"), b"", qos=1, retain=True).wait_for_publish(5)
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def device_id() -> str:
    return f"dev-test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def cloud(mqtt_url: str, device_id: str) -> Iterator[Cloud]:
    cloud = Cloud(device_id, mqtt_url)
    yield cloud
    cloud.close()


@pytest.fixture
def runtime(
    mqtt_url: str, device_id: str, cloud: Cloud, signer: Signer, agent_config_factory: Any
) -> Iterator[Runtime]:
    config = agent_config_factory(
        mqtt_url=mqtt_url,
        device_id=device_id,
        secret="unused-on-an-anonymous-broker",
        trust=[trusted(signer)],
        agent={"heartbeat_interval_s": 3600},
        outbox={"max_bytes": 64 * 1024},
    )
    runtime = Runtime(config)
    thread = threading.Thread(target=runtime.run, name="agent-run")
    thread.start()
    # Connected is not enough: a non-retained message sent before the SUBACK would not reach us.
    assert runtime.link.subscribed.wait(10)
    yield runtime
    runtime.stop()
    thread.join(30)
    assert not thread.is_alive()


def test_it_says_online_with_its_version_and_reports_generation_zero(runtime: Runtime, cloud: Cloud) -> None:
    assert cloud.wait_for(lambda got: any(s == "reported" for s, _ in got))
    assert cloud.of("reported")[0]["generation"] == 0 and cloud.of("reported")[0]["phase"] == "idle"
    assert cloud.wait_for(lambda got: any(s == "status" and m["state"] == "online" for s, m in got))


def test_an_overflowing_outbox_reports_how_many_records_it_dropped(runtime: Runtime, cloud: Cloud) -> None:
    for i in range(120):
        runtime.outbox.append("window", {"i": i, "pad": "p" * 1000})
    runtime.outbox.commit()
    dropped = runtime.outbox.stats().dropped_total
    assert dropped > 0

    def overflows(got: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
        return [m["data"] for s, m in got if s == "events" and m["kind"] == "buffer_overflow"]

    # One event per drop noticed; together they account for every record dropped.
    assert cloud.wait_for(lambda got: sum(e["dropped"] for e in overflows(got)) == dropped)
    assert overflows(cloud.received)[-1]["dropped_total"] == dropped


def test_an_unsupported_command_is_answered_not_ignored(runtime: Runtime, cloud: Cloud) -> None:
    cloud.send("commands", protocol.Command(id="c-9", name="snapshot"))
    assert cloud.wait_for(lambda got: any(m.get("kind") == "command_unsupported" for s, m in got if s == "events"))
    (event,) = [m for m in cloud.of("events") if m["kind"] == "command_unsupported"]
    assert event["data"] == {"command_id": "c-9", "name": "snapshot"}


def test_verified_desired_is_stored_and_reported_and_an_older_or_forged_one_is_not(
    runtime: Runtime, cloud: Cloud, signer: Signer
) -> None:
    me = runtime.config.device.id
    cloud.send("desired", sign(desired_doc(2, device_id=me, config={"telemetry_interval_s": 5}), signer))
    cloud.send("desired", sign(desired_doc(1, device_id=me, config={"telemetry_interval_s": 9}), signer))
    cloud.send("desired", desired_doc(9, device_id=me, config={"telemetry_interval_s": 1}))  # unsigned
    cloud.send("desired", sign(desired_doc(3, device_id=me, config={"telemetry_interval_s": 6}), signer))
    assert cloud.wait_for(lambda got: any(s == "reported" and m["generation"] == 3 for s, m in got))
    # The refusals change nothing the device reports; each is an event with its reason.
    assert [m["generation"] for m in cloud.of("reported")] == [0, 2, 3]
    refused = [
        (m["data"]["generation"], m["data"]["reason"]) for m in cloud.of("events") if m["kind"] == "desired_rejected"
    ]
    assert refused == [(1, "stale"), (9, "bad_signature")]
    stored = protocol.decode("desired", runtime.config.desired_path.read_bytes())
    assert isinstance(stored, protocol.Desired) and stored.generation == 3


def test_a_clean_stop_commits_the_outbox_and_says_offline(runtime: Runtime, cloud: Cloud, tmp_path: Path) -> None:
    from agent.outbox import inspect

    runtime.outbox.commit_interval_s = 60
    seq = runtime.outbox.append("window", {"last": True})
    runtime.stop()
    assert cloud.wait_for(lambda got: any(s == "status" and m["state"] == "offline" for s, m in got))
    assert runtime.stopping.is_set()
    stats = inspect(tmp_path / "data" / "outbox.db")
    assert stats is not None and stats.last_seq >= seq


def test_flush_commits_and_sends_everything_unacknowledged_now(runtime: Runtime, cloud: Cloud) -> None:
    runtime.outbox.commit_interval_s = 60
    runtime.outbox.append("window", {"pending": True})
    cloud.send("commands", protocol.Command(id="c-flush", name="flush"))
    assert cloud.wait_for(lambda got: any(m.get("kind") == "flushed" for s, m in got if s == "events"))
    (event,) = [m["data"] for m in cloud.of("events") if m["kind"] == "flushed"]
    # Nothing acknowledges here, so the startup heartbeat is resent along with the new record.
    assert event["command_id"] == "c-flush" and event["sent"] == 2 and event["outbox_depth"] == 2


def test_after_a_reconnect_the_telemetry_backlog_waits_behind_escalations_but_not_for_long(
    runtime: Runtime, cloud: Cloud, monkeypatch: pytest.MonkeyPatch
) -> None:
    escalations_waiting = threading.Event()
    escalations_waiting.set()
    runtime.hold_backlog_while(escalations_waiting.is_set)
    reported = len(cloud.of("reported"))
    runtime.inbox.put(("connected", None))  # as the link says after an outage
    # The reported state goes first, whatever waits.
    assert cloud.wait_for(lambda got: sum(s == "reported" for s, _ in got) > reported)
    runtime.outbox.append("window", {"i": 1})
    runtime.outbox.commit()
    assert runtime.backlog_held() and runtime.pump() == 0
    assert runtime.outbox.stats().in_flight == 0

    escalations_waiting.clear()  # the escalations went up: the backlog goes now
    assert not runtime.backlog_held()
    escalations_waiting.set()
    monkeypatch.setattr("agent.runtime.BACKLOG_HOLD_MAX_S", 0.0)  # and never longer than the bound
    assert not runtime.backlog_held()

"""Local actions fire on matching results, retry their failures, and never hold up inference."""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import TypeAdapter, ValidationError

from agent.actions import ActionDispatcher, ActionError, CommandAction
from agent.config import ActionSettings, ActionsSettings, CommandActionSettings, Rule
from agent.inference import SessionHolder
from agent.kernel.decode import Detection, Result
from agent.pipeline import Pipeline
from tests.agent.conftest import ListSource, RecordingServer


def crack(confidence: float = 0.95) -> Result:
    return Result(label="crack", confidence=confidence, model_name="parts", model_version="1.0.0")


class Fake:
    """An action that fails its first ``failures`` attempts; it can also be made to hang until released."""

    def __init__(self, rule: Rule, failures: int = 0) -> None:
        self.name, self.rule = "fake", rule
        self.failures = failures
        self.calls: list[dict[str, Any]] = []
        self.entered = threading.Event()
        self.release = threading.Event()
        self.release.set()

    def __call__(self, payload: dict[str, Any]) -> None:
        self.calls.append(payload)
        self.entered.set()
        assert self.release.wait(10)
        if len(self.calls) <= self.failures:
            raise ActionError("the PLC did not answer")


def test_a_rule_matches_its_classes_at_its_confidence() -> None:
    rule = Rule(classes=["crack", "scratch"], min_confidence=0.8)

    assert rule.matches(crack(0.9))
    assert not rule.matches(crack(0.7))
    assert not rule.matches(Result(label="ok", confidence=0.99))
    assert Rule(min_confidence=0.5).matches(Result(label="ok", confidence=0.6))  # no classes: any class
    detections = [Detection("gear", 0, 0.5, (0, 0, 1, 1)), Detection("crack", 1, 0.85, (0, 0, 1, 1))]
    assert rule.matches(Result(label="gear", confidence=0.5, detections=detections))


def test_matching_results_fire_the_action_and_others_do_not() -> None:
    action = Fake(Rule(classes=["crack"], min_confidence=0.8))
    dispatcher = ActionDispatcher([action])
    dispatcher.start()

    assert dispatcher.submit(crack(0.95)) == 1
    assert dispatcher.submit(Result(label="ok", confidence=0.99)) == 0
    assert dispatcher.wait_idle(10)
    dispatcher.stop()

    assert [call["label"] for call in action.calls] == ["crack"]
    assert (dispatcher.counters.fired, dispatcher.counters.succeeded) == (1, 1)


def test_a_failing_action_is_counted_and_retried_with_backoff_until_it_succeeds() -> None:
    action = Fake(Rule(min_confidence=0.5), failures=2)
    dispatcher = ActionDispatcher([action], backoff_s=0.001, max_attempts=5)
    dispatcher.start()

    dispatcher.submit(crack())
    assert dispatcher.wait_idle(10)
    dispatcher.stop()

    assert len(action.calls) == 3
    counters = dispatcher.counters
    assert (counters.failed, counters.retried, counters.succeeded, counters.gave_up) == (2, 2, 1, 0)


def test_an_action_that_keeps_failing_is_given_up_after_its_attempts() -> None:
    action = Fake(Rule(min_confidence=0.5), failures=100)
    dispatcher = ActionDispatcher([action], backoff_s=0.001, max_attempts=3)
    dispatcher.start()

    dispatcher.submit(crack())
    assert dispatcher.wait_idle(10)
    dispatcher.stop()

    assert len(action.calls) == 3
    assert (dispatcher.counters.failed, dispatcher.counters.gave_up) == (3, 1)


def test_a_hung_action_never_blocks_inference_and_a_full_queue_drops_and_counts() -> None:
    action = Fake(Rule(min_confidence=0.5))
    action.release.clear()  # the site's PLC hangs
    dispatcher = ActionDispatcher([action], queue_size=3)
    results: list[Result] = []
    images = [np.zeros((2, 2, 3), dtype=np.uint8)] * 20

    class Confident:
        name, version = "m", "1"

        def infer(self, image: Any) -> Result:
            return crack()

    pipeline = Pipeline(
        ListSource(images),
        SessionHolder(Confident()),
        lossless=True,
        actions=dispatcher,
        on_result=lambda f, r: results.append(r),
    ).start()

    # Every frame is decided while the action is still hung.
    assert pipeline.wait(10)
    assert len(results) == 20 and action.entered.is_set()
    assert dispatcher.counters.fired == 1 + 3  # one running, three queued
    assert dispatcher.counters.dropped == 16
    action.release.set()
    assert dispatcher.wait_idle(10)
    pipeline.stop()
    assert dispatcher.counters.succeeded == 4


def test_a_webhook_posts_the_result_as_json(http_server: RecordingServer) -> None:
    settings = ActionsSettings.model_validate(
        {"rules": [{"kind": "webhook", "url": f"{http_server.url}/reject", "when": {"classes": ["crack"]}}]}
    )
    dispatcher = ActionDispatcher.from_settings(settings)
    dispatcher.start()

    dispatcher.submit(crack())
    assert http_server.wait_for(1)
    assert dispatcher.wait_idle(10)
    dispatcher.stop()

    request = http_server.requests[0]
    assert request.path == "/reject"
    assert request.headers["Content-Type"] == "application/json"
    assert json.loads(request.body)["label"] == "crack"
    assert dispatcher.counters.succeeded == 1


def test_a_webhook_answering_an_error_is_retried_until_it_recovers(http_server: RecordingServer) -> None:
    http_server.status = 503
    settings = ActionsSettings.model_validate(
        {
            "backoff_s": 0.01,
            "backoff_max_s": 0.01,
            "max_attempts": 50,
            "rules": [{"kind": "webhook", "url": http_server.url}],
        }
    )
    dispatcher = ActionDispatcher.from_settings(settings)
    dispatcher.start()

    dispatcher.submit(crack())
    assert http_server.wait_for(2)  # failed at least once
    http_server.status = 200
    assert dispatcher.wait_idle(10)
    dispatcher.stop()

    # Every request but the last was answered with an error and counted as a failure.
    assert dispatcher.counters.succeeded == 1
    assert dispatcher.counters.failed == len(http_server.requests) - 1 >= 1


def test_a_command_gets_its_arguments_filled_and_the_result_on_stdin(tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    script = "import sys, json; d = json.load(sys.stdin); open(sys.argv[1], 'w').write(json.dumps([sys.argv[2], d]))"
    action = CommandAction(CommandActionSettings(argv=[sys.executable, "-c", script, str(out), "{label}@{confidence}"]))

    action(crack(0.95).to_json())

    argument, payload = json.loads(out.read_text())
    assert argument == "crack@0.9500"
    assert payload["model_version"] == "1.0.0"


def test_a_failing_command_raises_with_its_exit_status() -> None:
    action = CommandAction(CommandActionSettings(argv=[sys.executable, "-c", "import sys; sys.exit(3)"]))
    with pytest.raises(ActionError, match="exited with 3"):
        action(crack().to_json())


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"kind": "webhook", "url": "ftp://plc/"}, "http:// or https://"),
        ({"kind": "mqtt", "host": "plc", "topic": "line/#"}, "wildcards"),
        ({"kind": "command", "argv": []}, "at least 1"),
        ({"kind": "siren"}, "does not match any of the expected tags"),
        ({"kind": "webhook", "url": "http://plc/", "when": {"min_confidence": 2}}, "less than or equal to 1"),
    ],
)
def test_bad_action_settings_are_refused_with_the_reason(document: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        TypeAdapter(ActionSettings).validate_python(document)


@pytest.mark.integration
def test_an_mqtt_action_publishes_on_the_site_broker(mqtt_url: str) -> None:
    import uuid
    from urllib.parse import urlsplit

    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    from agent.actions import MqttAction
    from agent.config import MqttActionSettings

    url = urlsplit(mqtt_url)
    topic = f"site-test/{uuid.uuid4().hex}/reject"
    received: list[bytes] = []
    subscribed, arrived = threading.Event(), threading.Event()
    listener = mqtt.Client(CallbackAPIVersion.VERSION2)
    listener.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1)
    listener.on_subscribe = lambda c, u, mid, rcs, p: subscribed.set()

    def on_message(c: Any, u: Any, message: Any) -> None:
        received.append(message.payload)
        arrived.set()

    listener.on_message = on_message
    listener.connect(url.hostname or "127.0.0.1", url.port or 1883)
    listener.loop_start()
    try:
        assert subscribed.wait(10)
        action = MqttAction(MqttActionSettings(host=url.hostname or "127.0.0.1", port=url.port or 1883, topic=topic))
        action(crack().to_json())
        assert arrived.wait(10)
        action.close()
    finally:
        listener.loop_stop()
        listener.disconnect()

    assert json.loads(received[0])["label"] == "crack"

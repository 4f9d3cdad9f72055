"""The production topology of deploy/compose, brought up here from the same commands, and smoke-tested.

No container images can be pulled on CI, so the engines are the machine's own:
PostgreSQL on 127.0.0.1:5432 (a fresh database), Redis on 127.0.0.1:6379 (one
database of its own) and a private Mosquitto running deploy/compose/mosquitto.conf
with dynamic security (its TLS listener left out: tests/brokers.py). The
processes are the compose file's commands (gunicorn with deploy/gunicorn.conf.py,
the bridge, a prefork Celery worker, the beat) in production mode, with every
secret from a file, after the release steps (migrate, collectstatic,
broker_bootstrap, a signing key), from tests/stack.py. Then: every probe, every process's /metrics,
an API call with a token, a device enrolled through the API (its broker
account made by the web process) whose status the bridge stores, and a clean
stop on SIGTERM.
"""

from __future__ import annotations

import json
import re
import signal
import time
from collections.abc import Iterator

import paho.mqtt.client as mqtt
import pytest
from celery import Celery
from paho.mqtt.enums import CallbackAPIVersion

from agent.kernel import protocol
from tests.stack import Stack, StackError, http, missing_services, production_stack

pytestmark = pytest.mark.integration

REDIS_URL = "redis://127.0.0.1:6379/13"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    reason = missing_services(REDIS_URL)
    if reason:
        pytest.skip(reason)
    with production_stack(tmp_path_factory.mktemp("smoke"), redis_url=REDIS_URL) as running:
        yield running


def test_every_process_is_live_then_ready(stack: Stack) -> None:
    assert json.loads(stack.wait_ok(f"{stack.web}/healthz", "web")) == {"status": "ok"}
    ready = json.loads(stack.wait_ok(f"{stack.web}/readyz", "web"))
    assert {name for name, check in ready["checks"].items() if check["ok"]} == {
        "database",
        "migrations",
        "task_queue",
        "mqtt",
    }
    for name, url in stack.probes.items():
        stack.wait_ok(f"{url}/healthz", name)
        ready = json.loads(stack.wait_ok(f"{url}/readyz", name))
        assert ready["status"] == "ready", (name, ready)
    assert "subscribed" in json.loads(http(f"{stack.probes['bridge']}/readyz")[1])["checks"]


def test_a_signed_in_api_call_and_a_device_enrolled_through_the_broker(stack: Stack) -> None:
    stack.wait_ok(f"{stack.probes['bridge']}/readyz", "bridge")
    assert stack.api("/api/v1/sites/", token="eft_wrong")[0] == 401
    status, site = stack.api("/api/v1/sites/", {"slug": "plant-a", "name": "Plant A", "timezone": "UTC"})
    assert status == 201, site
    status, token = stack.api("/api/v1/sites/plant-a/enrollment-tokens/", {})
    assert status == 201, token
    # The web process creates the device's account at the broker (dynamic security) before it answers.
    status, answer = stack.api("/api/v1/enroll", {"token": token["token"], "name": "cam-1"}, token="")
    assert status == 201, answer
    identity = protocol.EnrollmentAnswer.model_validate(answer)
    device = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=identity.device_id)
    device.username_pw_set(identity.device_id, identity.secret)
    device.connect(stack.broker.host, stack.broker.port)
    device.loop_start()
    try:
        message = protocol.encode(protocol.Status(state="online", agent_version="0.1.0"))
        device.publish(protocol.topic(identity.device_id, "status"), message, qos=1, retain=True).wait_for_publish(10)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            status, body = stack.api(f"/api/v1/devices/{identity.device_id}/")
            if status == 200 and body["online"]:
                break
            time.sleep(0.3)
        assert status == 200 and body["online"] is True, (body, stack.log("bridge"))
    finally:
        device.loop_stop()
        device.disconnect()


def test_each_process_serves_its_own_metrics(stack: Stack) -> None:
    bearer = {"Authorization": f"Bearer {stack.metrics_token}"}
    assert http(f"{stack.web}/metrics")[0] == 401
    web = stack.wait_ok(f"{stack.web}/metrics", "web", headers=bearer)
    assert "edgefleet_devices" in web and "edgefleet_http_requests_total{" in web
    # gunicorn's workers add up through the multiprocess directory; process_* per live worker.
    assert len(set(re.findall(r'process_resident_memory_bytes\{pid="(\d+)"\}', web))) >= 1
    bridge = stack.wait_ok(f"{stack.probes['bridge']}/metrics", "bridge", headers=bearer)
    assert "edgefleet_bridge_connected 1.0" in bridge and "process_cpu_seconds_total" in bridge
    assert 'edgefleet_bridge_messages_total{kind="status"}' in bridge
    # A task sent as any process sends one; a prefork child runs it and the probe port counts it.
    Celery(broker=REDIS_URL).send_task("fleet.tasks.mark_silent_devices_offline")
    line = 'edgefleet_celery_tasks_total{state="SUCCESS",task="fleet.tasks.mark_silent_devices_offline"}'
    deadline = time.monotonic() + 30
    worker = ""
    while time.monotonic() < deadline and line not in worker:
        worker = stack.wait_ok(f"{stack.probes['worker']}/metrics", "worker", headers=bearer)
        time.sleep(0.3)
    assert line in worker, stack.log("worker")
    assert "edgefleet_celery_task_duration_seconds_bucket" in worker
    beat = stack.wait_ok(f"{stack.probes['beat']}/metrics", "beat", headers=bearer)
    assert "process_resident_memory_bytes" in beat


def test_the_processes_stop_cleanly_on_sigterm(stack: Stack) -> None:
    # Resident memory of each process with its children, for docs/operations.md ("Capacity").
    print("smoke memory MiB:", {name: round(stack.rss_mib(name)) for name in stack.processes})
    for process in stack.processes.values():
        process.send_signal(signal.SIGTERM)
    for name in stack.processes:
        # Signalled above, all at once; each is now waited for.
        try:
            code = stack.terminate(name, signalled=True)
        except StackError as error:
            pytest.fail(str(error))
        assert code == 0, f"{name} exited with {code}:\n{stack.log(name)}"

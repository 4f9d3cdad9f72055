"""Local actions: the decision reaches the site without the cloud.

A rule (classes, minimum confidence) picks the results that matter; each
matching result fires its action: a command (argv, never a shell), a webhook
(HTTP POST of JSON) or an MQTT publish on the site's own broker. Actions run
on a worker thread behind a bounded queue, so a slow PLC or a dead webhook
never holds up inference: when the queue is full the newest job is dropped
and counted, and failures are retried with exponential backoff up to a limit.
"""

from __future__ import annotations

import heapq
import json
import logging
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from agent.config import ActionsSettings, CommandActionSettings, MqttActionSettings, Rule, WebhookActionSettings
from agent.kernel.decode import Result

log = logging.getLogger(__name__)


class ActionError(RuntimeError):
    """One attempt of an action failed; it may be retried."""


# --- the actions ------------------------------------------------------------


class Action(Protocol):
    name: str
    rule: Rule

    def __call__(self, payload: dict[str, Any]) -> None:
        """Perform the action once; raise ActionError (or OSError) when it failed."""


class CommandAction:
    def __init__(self, settings: CommandActionSettings) -> None:
        self.name = settings.name
        self.rule = settings.when
        self._argv = list(settings.argv)
        self._timeout = settings.timeout_s

    def __call__(self, payload: dict[str, Any]) -> None:
        fields = {"label": str(payload.get("label") or ""), "confidence": f"{payload.get('confidence', 0):.4f}"}
        # str.replace, not str.format: an argument holding other braces stays as written.
        argv = [a.replace("{label}", fields["label"]).replace("{confidence}", fields["confidence"]) for a in self._argv]
        try:
            completed = subprocess.run(
                argv, input=json.dumps(payload).encode(), capture_output=True, timeout=self._timeout, check=False
            )
        except subprocess.TimeoutExpired:
            raise ActionError(f"{argv[0]} timed out after {self._timeout}s") from None
        if completed.returncode != 0:
            stderr = completed.stderr.decode("utf-8", "replace").strip()[:200]
            raise ActionError(f"{argv[0]} exited with {completed.returncode}: {stderr}")


class WebhookAction:
    def __init__(self, settings: WebhookActionSettings) -> None:
        self.name = settings.name
        self.rule = settings.when
        self._url = settings.url
        self._timeout = settings.timeout_s
        self._headers = {"Content-Type": "application/json", **settings.headers}

    def __call__(self, payload: dict[str, Any]) -> None:
        request = urllib.request.Request(  # noqa: S310 - the scheme is checked to be http(s) by the settings
            self._url, data=json.dumps(payload).encode(), headers=self._headers, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=self._timeout) as response:  # noqa: S310
                response.read()
        except urllib.error.HTTPError as exc:
            raise ActionError(f"webhook answered {exc.code}") from None
        except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
            raise ActionError(f"webhook unreachable: {exc}") from None


class MqttAction:
    """Publishes on the site's broker (not the control plane's), connecting lazily and reconnecting."""

    def __init__(self, settings: MqttActionSettings) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.name = settings.name
        self.rule = settings.when
        self._settings = settings
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="", clean_session=True)
        if settings.username is not None:
            self._client.username_pw_set(settings.username, settings.password)
        self._client.reconnect_delay_set(1, 30)
        self._connected = threading.Event()
        self._client.on_connect = lambda client, userdata, flags, reason, properties: self._connected.set()
        self._client.on_disconnect = lambda client, userdata, flags, reason, properties: self._connected.clear()
        self._started = False

    def __call__(self, payload: dict[str, Any]) -> None:
        if not self._started:
            try:
                self._client.connect_async(self._settings.host, self._settings.port, keepalive=30)
            except (OSError, ValueError) as exc:
                raise ActionError(f"site broker unreachable: {exc}") from None
            self._client.loop_start()
            self._started = True
        # paho refuses a publish while disconnected; the dispatcher retries this attempt later.
        if not self._connected.wait(self._settings.timeout_s):
            raise ActionError(f"site broker {self._settings.host}:{self._settings.port} not connected")
        info = self._client.publish(self._settings.topic, json.dumps(payload), qos=self._settings.qos)
        try:
            info.wait_for_publish(self._settings.timeout_s)
        except RuntimeError as exc:  # paho: not connected and the message was refused
            raise ActionError(f"site broker: {exc}") from None
        if not info.is_published():
            raise ActionError(f"site broker did not confirm within {self._settings.timeout_s}s")

    def close(self) -> None:
        if self._started:
            self._client.loop_stop()
            self._client.disconnect()


def build_action(settings: CommandActionSettings | WebhookActionSettings | MqttActionSettings) -> Action:
    if isinstance(settings, CommandActionSettings):
        return CommandAction(settings)
    if isinstance(settings, WebhookActionSettings):
        return WebhookAction(settings)
    return MqttAction(settings)


# --- the dispatcher ---------------------------------------------------------


@dataclass(order=True)
class _Job:
    due: float
    seq: int
    action: Action = field(compare=False)
    payload: dict[str, Any] = field(compare=False)
    attempt: int = field(default=1, compare=False)


@dataclass
class ActionCounters:
    fired: int = 0
    """Jobs accepted into the queue."""
    succeeded: int = 0
    failed: int = 0
    """Failed attempts, retried or not."""
    retried: int = 0
    gave_up: int = 0
    dropped: int = 0
    """Jobs refused because the queue was full."""


class ActionDispatcher:
    """Runs actions for matching results on a worker thread; ``submit`` never blocks."""

    def __init__(
        self,
        actions: Sequence[Action],
        *,
        queue_size: int = 256,
        max_attempts: int = 5,
        backoff_s: float = 0.5,
        backoff_max_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.actions = list(actions)
        self.counters = ActionCounters()
        self._queue_size = queue_size
        self._max_attempts = max_attempts
        self._backoff = backoff_s
        self._backoff_max = backoff_max_s
        self._clock = clock
        self._ready: deque[_Job] = deque()
        self._retries: list[_Job] = []  # a heap on due time
        self._busy = 0
        self._seq = 0
        self._cond = threading.Condition()
        self._stopped = False
        self._thread: threading.Thread | None = None

    @classmethod
    def from_settings(cls, settings: ActionsSettings) -> ActionDispatcher:
        return cls(
            [build_action(rule) for rule in settings.rules],
            queue_size=settings.queue_size,
            max_attempts=settings.max_attempts,
            backoff_s=settings.backoff_s,
            backoff_max_s=settings.backoff_max_s,
        )

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="actions", daemon=True)
        self._thread.start()

    def submit(self, result: Result) -> int:
        """Queue every action whose rule matches ``result``; returns how many were queued."""
        matching = [action for action in self.actions if action.rule.matches(result)]
        if not matching:
            return 0
        payload = result.to_json()
        queued = 0
        with self._cond:
            for action in matching:
                if len(self._ready) + len(self._retries) >= self._queue_size:
                    self.counters.dropped += 1
                    continue
                self._seq += 1
                self._ready.append(_Job(0.0, self._seq, action, payload))
                self.counters.fired += 1
                queued += 1
            self._cond.notify_all()
        return queued

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until nothing is queued, retrying or running; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: not (self._ready or self._retries or self._busy), timeout)

    def stop(self, timeout: float | None = 5.0) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
        for action in self.actions:
            close = getattr(action, "close", None)
            if close is not None:
                close()

    def _next_job(self) -> _Job | None:
        with self._cond:
            while not self._stopped:
                if self._ready:
                    job = self._ready.popleft()
                    break
                now = self._clock()
                if self._retries and self._retries[0].due <= now:
                    job = heapq.heappop(self._retries)
                    break
                wait = self._retries[0].due - now if self._retries else None
                self._cond.wait(wait)
            else:
                return None
            self._busy += 1
            return job

    def _run(self) -> None:
        while (job := self._next_job()) is not None:
            try:
                job.action(job.payload)
            except (ActionError, OSError, ValueError) as exc:
                self._failed(job, exc)
            else:
                with self._cond:
                    self.counters.succeeded += 1
            finally:
                with self._cond:
                    self._busy -= 1
                    self._cond.notify_all()

    def _failed(self, job: _Job, exc: Exception) -> None:
        with self._cond:
            self.counters.failed += 1
            if job.attempt >= self._max_attempts:
                self.counters.gave_up += 1
                log.warning(
                    "action given up",
                    extra={"action": job.action.name, "attempts": job.attempt, "error": str(exc)},
                )
                return
            delay = min(self._backoff_max, self._backoff * 2 ** (job.attempt - 1))
            self.counters.retried += 1
            self._seq += 1
            retry = _Job(self._clock() + delay, self._seq, job.action, job.payload, job.attempt + 1)
            heapq.heappush(self._retries, retry)
        log.info(
            "action failed, retrying",
            extra={"action": job.action.name, "attempt": job.attempt, "retry_in_s": round(delay, 1), "error": str(exc)},
        )

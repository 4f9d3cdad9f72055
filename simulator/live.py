"""Live mode: thousands of ``SimDevice`` in one process, enrolled over the REST API, on a real MQTT broker.

One asyncio event loop drives every connection. Each device has a paho-mqtt 2
client whose socket the loop watches (paho's ``on_socket_*`` callbacks, as in
paho's own ``loop_asyncio`` example and as ``aiomqtt`` does underneath), so
there is no thread per device and no second copy of the protocol: paho
frames MQTT 3.1.1 as the agent's link does, the kernel's ``protocol`` module
builds and checks every payload. (``aiomqtt`` would add a task and a queue per
client for its async iterator, which a device that only reacts to a few
messages does not need; paho is already what the agent runs.)

One task moves simulated time: it wakes each device when it has something due
(a window, a heartbeat, the next install phase) and publishes what it says.
One task pings: paho's ``loop_misc`` (keepalive) for every client once a
second. Faults cut a device's link by shutting its socket, so the broker sees
a dropped connection and publishes its retained ``offline`` will, as it would
for a device that lost power or a site that lost its uplink.

HTTP (enrollment, escalation uploads) goes through a small thread pool with
``urllib``: it is rare next to MQTT traffic and the agent uses the same calls.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import heapq
import json
import logging
import math
import resource
import socket
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from agent.kernel import protocol, verify
from simulator import behaviour
from simulator.behaviour import DeviceSpec
from simulator.device import Out, Publish, SimDevice, SiteLinks, Upload
from simulator.scenario import Scenario

log = logging.getLogger(__name__)

SUBSCRIPTIONS = protocol.CLOUD_TO_DEVICE
RECONNECT_S = (1.0, 30.0)


class LiveError(RuntimeError):
    """The live run cannot start (enrollment refused, no tokens, the broker unreachable)."""


@dataclass
class Identity:
    """What enrollment gave one simulated device; kept in the state file so a rerun does not enroll again."""

    name: str
    site: str
    device_id: str
    secret: str
    broker_url: str
    trust_store: list[dict[str, Any]]


@dataclass
class Options:
    server: str
    mqtt_url: str | None = None
    api_token: str | None = None
    enrollment_tokens: list[str] = field(default_factory=list)
    state_path: Path | None = None
    duration_s: float | None = None
    connect_per_s: float = 1000.0
    uploads: bool = True
    http_workers: int = 8
    keepalive_s: int = 60
    report_every_s: float = 10.0
    http_timeout_s: float = 30.0
    resend_after_s: float = 30.0  # the agent's default (agent.config): unacknowledged telemetry goes again


@dataclass
class Report:
    devices: int = 0
    connected: int = 0
    connected_peak: int = 0
    published: int = 0
    received: int = 0
    uploads: int = 0
    upload_failures: int = 0
    desired_accepted: int = 0
    desired_refused: int = 0
    connect_refused: int = 0
    wall_s: float = 0.0
    cpu_s: float = 0.0
    max_rss_mb: float = 0.0
    versions: dict[str, int] = field(default_factory=dict)

    @property
    def messages_per_s(self) -> float:
        return (self.published + self.received) / self.wall_s if self.wall_s else 0.0

    def as_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["messages_per_s"] = round(self.messages_per_s, 1)
        out["cpu_percent"] = round(100.0 * self.cpu_s / self.wall_s, 1) if self.wall_s else 0.0
        return out


# --- enrollment ---------------------------------------------------------------------------


class Api:
    """The few REST calls a simulated fleet makes, blocking (run them in the pool)."""

    def __init__(self, server: str, *, api_token: str | None, timeout: float) -> None:
        self.server = server.rstrip("/")
        self.api_token = api_token
        self.timeout = timeout

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        headers: dict[str, str] | None = None,
        raw: bytes | None = None,
    ) -> tuple[int, Any, dict[str, str]]:
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        request = urllib.request.Request(  # noqa: S310 - the scheme is checked by the command line
            f"{self.server}{path}", data=data, method=method, headers={"Accept": "application/json", **(headers or {})}
        )
        if raw is None and data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310
                status, content, answer_headers = response.status, response.read(), dict(response.headers)
        except urllib.error.HTTPError as exc:
            status, content, answer_headers = exc.code, exc.read(), dict(exc.headers or {})
        except (urllib.error.URLError, OSError) as exc:
            raise LiveError(f"cannot reach {self.server}: {getattr(exc, 'reason', exc)}") from None
        try:
            document = json.loads(content) if content else None
        except ValueError:
            document = None
        return status, document, answer_headers

    def _admin(self) -> dict[str, str]:
        if not self.api_token:
            raise LiveError("creating sites and enrollment tokens needs --api-token")
        return {"Authorization": f"Bearer {self.api_token}"}

    def ensure_site(self, slug: str) -> None:
        status, _, _ = self.call("GET", f"/api/v1/sites/{slug}/", headers=self._admin())
        if status == 200:
            return
        status, document, _ = self.call("POST", "/api/v1/sites/", {"slug": slug, "name": slug}, headers=self._admin())
        if status != 201:
            raise LiveError(f"cannot create site {slug}: HTTP {status} {_detail(document)}")

    def issue_token(self, slug: str) -> str:
        path = f"/api/v1/sites/{slug}/enrollment-tokens/"
        status, document, _ = self.call("POST", path, {"note": "edgefleet-sim"}, headers=self._admin())
        if status != 201 or not isinstance(document, dict) or "token" not in document:
            raise LiveError(f"cannot issue an enrollment token for {slug}: HTTP {status} {_detail(document)}")
        return str(document["token"])

    def enroll(self, token: str, spec: DeviceSpec, *, site: str | None, agent_version: str) -> Identity:
        """``POST /api/v1/enroll`` as ``edgefleet-agent enroll`` does, retrying what may pass by itself."""
        body: dict[str, Any] = {
            "token": token,
            "name": spec.name,
            "hardware_profile": spec.hardware,
            "agent_version": agent_version,
            "labels": {"simulated": "true"},
        }
        if site:
            body["site"] = site
        delay = 1.0
        for _ in range(8):
            status, document, headers = self.call("POST", "/api/v1/enroll", body)
            if status == 201:
                answer = protocol.EnrollmentAnswer.model_validate(document)
                trust = [key.model_dump(mode="json", exclude_none=True) for key in answer.trust_store]
                return Identity(spec.name, answer.site, answer.device_id, answer.secret, answer.broker_url, trust)
            if status not in (429, 503):
                raise LiveError(f"enrollment of {spec.name} refused: HTTP {status} {_detail(document)}")
            wait = headers.get("Retry-After", "")
            time.sleep(float(wait) if wait.isdigit() else delay)
            delay = min(delay * 2, 30.0)
        raise LiveError(f"enrollment of {spec.name}: the server kept answering {status}")

    def upload(self, identity: Identity, metadata: dict[str, Any]) -> int:
        """An escalated frame's metadata, multipart as ``agent.escalation`` sends it (no pixels)."""
        boundary = uuid.uuid4().hex
        body = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="metadata"\r\n'
            "Content-Type: application/json\r\n\r\n".encode()
            + json.dumps(metadata).encode()
            + f"\r\n--{boundary}--\r\n".encode()
        )
        auth = base64.b64encode(f"{identity.device_id}:{identity.secret}".encode()).decode()
        headers = {"Content-Type": f"multipart/form-data; boundary={boundary}", "Authorization": f"Basic {auth}"}
        status, _, _ = self.call("POST", "/api/v1/escalations/", headers=headers, raw=body)
        return status


def _detail(document: Any) -> str:
    if isinstance(document, dict):
        return str(document.get("detail") or document.get("code") or "")[:300]
    return ""


def load_state(path: Path | None) -> dict[str, Identity]:
    if path is None or not path.exists():
        return {}
    try:
        entries = json.loads(path.read_text())
        return {f"{e['site']}/{e['name']}": Identity(**e) for e in entries}
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise LiveError(f"{path}: not a state file of edgefleet-sim: {exc}") from None


def save_state(path: Path | None, identities: list[Identity]) -> None:
    if path is None:
        return
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps([asdict(i) for i in identities]))
    tmp.chmod(0o600)  # device secrets
    tmp.replace(path)


async def enroll_fleet(
    scenario: Scenario, specs: list[DeviceSpec], options: Options, pool: concurrent.futures.Executor
) -> list[Identity]:
    """An identity for every device: from the state file, else enrolled (site and token made with --api-token)."""
    api = Api(options.server, api_token=options.api_token, timeout=options.http_timeout_s)
    known = load_state(options.state_path)
    loop = asyncio.get_running_loop()
    missing = [s for s in specs if f"{s.site}/{s.name}" not in known]
    by_token = not options.api_token
    if by_token and len(options.enrollment_tokens) < len(missing):
        raise LiveError(
            f"{len(missing)} devices to enroll and {len(options.enrollment_tokens)} enrollment tokens: "
            "give one --enrollment-token per device, or --api-token to issue them"
        )
    if missing and not by_token:
        for slug in sorted({s.site for s in missing}):
            await loop.run_in_executor(pool, api.ensure_site, slug)
    tokens = iter(options.enrollment_tokens)

    def one(spec: DeviceSpec, token: str | None) -> Identity:
        site = None if by_token else spec.site
        return api.enroll(token or api.issue_token(spec.site), spec, site=site, agent_version=scenario.agent_version)

    jobs = [loop.run_in_executor(pool, one, spec, next(tokens) if by_token else None) for spec in missing]
    enrolled = await asyncio.gather(*jobs)
    out = []
    fresh = iter(enrolled)
    for spec in specs:
        out.append(known.get(f"{spec.site}/{spec.name}") or next(fresh))
    save_state(options.state_path, out)
    return out


# --- the fleet on the broker ------------------------------------------------------------


def _address(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "tcp"):
        raise LiveError(f"{url}: only mqtt:// brokers (no TLS) are simulated")
    return parts.hostname or "127.0.0.1", parts.port or 1883


class LiveDevice:
    """One device's paho client, driven by the fleet's event loop."""

    def __init__(self, fleet: LiveFleet, sim: SimDevice, identity: Identity) -> None:
        self.fleet = fleet
        self.sim = sim
        self.identity = identity
        self.wanted = True  # whether its link should be up (faults take it down)
        self.dead = False
        self.failures = 0
        self.up = False  # counted in the fleet's connected devices
        self.sock: socket.socket | None = None
        self.address = _address(fleet.options.mqtt_url or identity.broker_url)
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=sim.device_id, protocol=mqtt.MQTTv311, clean_session=True
        )
        client.username_pw_set(sim.device_id, identity.secret)
        client.will_set(protocol.topic(sim.device_id, "status"), protocol.OFFLINE_WILL, qos=1, retain=True)
        client.max_queued_messages_set(0)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_register_write
        client.on_socket_unregister_write = self._on_unregister_write
        self.client = client

    # --- sockets on the loop ---------------------------------------------------------

    def _on_socket_open(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        self.sock = sock
        self.fleet.loop.add_reader(sock, client.loop_read)

    def _on_socket_close(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        self.fleet.loop.remove_reader(sock)
        self.fleet.loop.remove_writer(sock)
        self.sock = None

    def _on_register_write(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        self.fleet.loop.add_writer(sock, client.loop_write)

    def _on_unregister_write(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        self.fleet.loop.remove_writer(sock)

    # --- the link ----------------------------------------------------------------------

    def connect(self) -> None:
        if not self.wanted or self.dead or self.sock is not None:
            return
        try:
            self.client.connect(*self.address, keepalive=self.fleet.options.keepalive_s)
        except OSError as exc:
            log.info("connect failed", extra={"device": self.sim.device_id, "error": str(exc)})
            self._retry()

    def cut(self, *, dead: bool = False) -> None:
        """The link drops without a goodbye: the broker notices and sends the retained ``offline`` will."""
        self.wanted = False
        self.dead = self.dead or dead
        self.sim.disconnect()
        if self.sock is not None:
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already gone

    def restore(self) -> None:
        if self.dead:
            return
        self.wanted = True
        self.connect()

    def _retry(self) -> None:
        self.failures += 1
        low, high = RECONNECT_S
        # Deterministic spread: devices do not come back in one burst.
        delay = min(high, low * 2 ** min(self.failures, 5)) * (1.0 + (self.sim.spec.index % 10) / 10)
        self.fleet.loop.call_later(delay, self.connect)

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            self.fleet.report.connect_refused += 1
            log.warning("connect refused", extra={"device": self.sim.device_id, "reason": str(reason)})
            return
        self.failures = 0
        client.subscribe([(protocol.topic(self.sim.device_id, suffix), 1) for suffix in SUBSCRIPTIONS])
        if not self.up:
            self.up = True
            self.fleet.connected += 1
        self.fleet.report.connected_peak = max(self.fleet.report.connected_peak, self.fleet.connected)
        self.send(self.sim.connect(self.fleet.now()))

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if self.up:
            self.up = False
            self.fleet.connected -= 1
        self.sim.disconnect()
        if self.wanted and not self.dead and not self.fleet.stopping:
            self._retry()

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        self.fleet.report.received += 1
        try:
            device_id, suffix = protocol.parse_topic(message.topic)
        except protocol.ProtocolError:
            return
        if device_id != self.sim.device_id:
            return
        self.send(self.sim.receive(self.fleet.now(), suffix, bytes(message.payload)))

    # --- what the device says -----------------------------------------------------------

    def tick(self, t: float) -> None:
        self.send(self.sim.due(t))

    def send(self, out: list[Out]) -> None:
        for item in out:
            if isinstance(item, Publish):
                self.client.publish(
                    protocol.topic(self.sim.device_id, item.suffix), item.payload, qos=1, retain=item.retain
                )
                self.fleet.report.published += 1
            elif isinstance(item, Upload) and self.fleet.options.uploads:
                self.fleet.upload(self.identity, item.metadata)
        self.fleet.schedule(self)


class LiveFleet:
    """Every device of a scenario on the broker, for ``duration_s`` or until ``stop()``."""

    def __init__(self, scenario: Scenario, identities: list[Identity], options: Options) -> None:
        self.scenario = scenario
        self.identities = identities
        self.options = options
        self.loop = asyncio.get_event_loop_policy().get_event_loop()
        self.report = Report(devices=len(identities))
        self.devices: list[LiveDevice] = []
        self.connected = 0
        self.stopping = False
        self._stop = asyncio.Event()
        self._t0 = 0.0
        self._heap: list[tuple[float, int]] = []
        self._scheduled: dict[int, float] = {}
        self._wake = asyncio.Event()
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._uploads_in_flight = 0

    def now(self) -> float:
        return self.loop.time() - self._t0

    def stop(self) -> None:
        """Ask the run to end (from any thread); nothing to do once it has."""
        if not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self._stop.set)

    def schedule(self, device: LiveDevice) -> None:
        at = device.sim.next_due()
        index = device.sim.spec.index
        if self._scheduled.get(index) != at:
            self._scheduled[index] = at
            heapq.heappush(self._heap, (at, index))
            if self._heap[0][1] == index:
                self._wake.set()

    def upload(self, identity: Identity, metadata: dict[str, Any]) -> None:
        # At most a few in flight: escalations are rare, and a slow server must not pile up threads' work.
        if self._pool is None or self._uploads_in_flight >= 4 * self.options.http_workers:
            self.report.upload_failures += 1
            return
        api = Api(self.options.server, api_token=None, timeout=self.options.http_timeout_s)
        self._uploads_in_flight += 1
        future = self.loop.run_in_executor(self._pool, api.upload, identity, metadata)
        future.add_done_callback(self._uploaded)

    def _uploaded(self, future: asyncio.Future[int]) -> None:
        self._uploads_in_flight -= 1
        ok = future.exception() is None and 200 <= future.result() < 300
        if ok:
            self.report.uploads += 1
        else:
            self.report.upload_failures += 1

    async def run(self, on_ready: Callable[[LiveFleet], None] | None = None) -> Report:
        self.loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._wake = asyncio.Event()
        cpu0, wall0 = time.process_time(), time.monotonic()
        origin = datetime.now(timezone.utc)
        self._t0 = self.loop.time()
        links = SiteLinks(self.scenario)
        keyrings: dict[str, verify.Keyring] = {}
        specs = behaviour.fleet(self.scenario)
        for spec, identity in zip(specs, self.identities, strict=True):
            key = json.dumps(identity.trust_store, sort_keys=True)
            if key not in keyrings:
                keyrings[key] = verify.Keyring.from_trust_store(identity.trust_store)
            sim = SimDevice(
                self.scenario,
                spec,
                device_id=identity.device_id,
                keyring=keyrings[key],
                origin=origin,
                links=links,
                resend_after_s=self.options.resend_after_s,
            )
            self.devices.append(LiveDevice(self, sim, identity))
        with concurrent.futures.ThreadPoolExecutor(self.options.http_workers, thread_name_prefix="sim-http") as pool:
            self._pool = pool
            tasks = [
                asyncio.create_task(self._connect_all()),
                asyncio.create_task(self._clock()),
                asyncio.create_task(self._keepalive()),
                asyncio.create_task(self._faults(specs)),
                asyncio.create_task(self._progress()),
            ]
            if on_ready is not None:
                on_ready(self)
            try:
                timeout = self.options.duration_s if self.options.duration_s is not None else self.scenario.duration_s
                await asyncio.wait_for(self._stop.wait(), timeout)
            except asyncio.TimeoutError:
                pass
            finally:
                self.stopping = True
                for task in tasks:
                    task.cancel()
                await self._goodbye()
            self._pool = None
        self.report.wall_s = time.monotonic() - wall0
        self.report.cpu_s = time.process_time() - cpu0
        self.report.max_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        self.report.connected = self.connected
        self.report.desired_accepted = sum(d.sim.counters.desired_accepted for d in self.devices)
        self.report.desired_refused = sum(d.sim.counters.desired_refused for d in self.devices)
        versions: dict[str, int] = {}
        for device in self.devices:
            name = f"{device.sim.model_version}:{device.sim.phase}"
            versions[name] = versions.get(name, 0) + 1
        self.report.versions = versions
        return self.report

    async def _connect_all(self) -> None:
        """Connect at ``connect_per_s``: a broker takes a burst of thousands of CONNECTs badly."""
        batch = max(1, int(self.options.connect_per_s / 10))
        for start in range(0, len(self.devices), batch):
            for device in self.devices[start : start + batch]:
                if behaviour.offline(self.scenario, device.sim.spec.site, self.now()):
                    device.wanted = False
                    continue
                device.connect()
                self.schedule(device)
            await asyncio.sleep(0.1)

    async def _clock(self) -> None:
        while True:
            now = self.now()
            while self._heap and self._heap[0][0] <= now:
                at, index = heapq.heappop(self._heap)
                if self._scheduled.get(index) != at:
                    continue
                self._scheduled.pop(index, None)
                try:
                    self.devices[index].tick(now)
                except Exception:
                    # One device's failure must not stop the clock of the thousands beside it.
                    log.exception("device step failed", extra={"device": self.devices[index].sim.device_id})
            delay = min(1.0, self._heap[0][0] - now) if self._heap else 1.0
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), max(0.0, delay))
            except asyncio.TimeoutError:
                pass

    async def _keepalive(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            for device in self.devices:
                if device.sock is not None:
                    device.client.loop_misc()

    async def _faults(self, specs: list[DeviceSpec]) -> None:
        """Cut and restore links on the scenario's timeline (site outages, devices that die)."""
        edges: list[tuple[float, int, str, int]] = []
        for index, at in behaviour.dead_at(self.scenario, specs).items():
            edges.append((at, 0, "die", index))
        for fault in self.scenario.faults:
            if fault.kind != "site_offline":
                continue
            for spec in specs:
                if spec.site == fault.site:
                    edges.append((fault.at_s, 1, "down", spec.index))
                    if fault.for_s is not None:
                        edges.append((fault.at_s + fault.for_s, 2, "up", spec.index))
        for at, _, what, index in sorted(edges):
            await asyncio.sleep(max(0.0, at - self.now()))
            device = self.devices[index]
            if what == "up":
                device.restore()
            else:
                device.cut(dead=what == "die")

    async def _progress(self) -> None:
        last_out, last_in, last_cpu, last_t = 0, 0, time.process_time(), time.monotonic()
        while True:
            await asyncio.sleep(self.options.report_every_s)
            now, cpu = time.monotonic(), time.process_time()
            span = max(1e-6, now - last_t)
            log.info(
                "simulating",
                extra={
                    "t_s": round(self.now(), 1),
                    "connected": self.connected,
                    "published_per_s": round((self.report.published - last_out) / span, 1),
                    "received_per_s": round((self.report.received - last_in) / span, 1),
                    "cpu_percent": round(100 * (cpu - last_cpu) / span, 1),
                },
            )
            last_out, last_in, last_cpu, last_t = self.report.published, self.report.received, cpu, now

    async def _goodbye(self) -> None:
        """Say ``offline`` (retained) and disconnect, as a stopping agent does."""
        offline = protocol.Status(state="offline", ts=protocol.utcnow())
        for device in self.devices:
            if device.sim.connected:
                device.client.publish(
                    protocol.topic(device.sim.device_id, "status"), protocol.encode(offline), qos=1, retain=True
                )
        deadline = self.loop.time() + 5.0
        while self.loop.time() < deadline and any(d.client.want_write() for d in self.devices if d.sock is not None):
            await asyncio.sleep(0.05)
        for device in self.devices:
            device.wanted = False
            if device.sock is not None:
                device.client.disconnect()
        await asyncio.sleep(0.2)


async def run(scenario: Scenario, options: Options, on_ready: Callable[[LiveFleet], None] | None = None) -> Report:
    """Enroll what is not enrolled yet, then run the fleet live."""
    _raise_file_limit(scenario.device_count + 256)
    specs = behaviour.fleet(scenario)
    with concurrent.futures.ThreadPoolExecutor(options.http_workers, thread_name_prefix="sim-enroll") as pool:
        identities = await enroll_fleet(scenario, specs, options, pool)
    fleet = LiveFleet(scenario, identities, options)
    return await fleet.run(on_ready)


def _raise_file_limit(wanted: int) -> None:
    """One socket per device: raise the soft limit on open files towards the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    if math.isfinite(hard) and hard != resource.RLIM_INFINITY and hard < wanted:
        log.warning("open files limited", extra={"hard_limit": hard, "wanted": wanted})

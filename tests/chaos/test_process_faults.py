"""Process faults during a rollout: kill -9 of the bridge, the worker, the beat and the broker, PostgreSQL restarted.

The production topology (tests/stack.py) runs against a private PostgreSQL
cluster this module starts (so restarting it touches nothing else), with a
live simulated fleet (simulator/live.py) of devices on three sites that enroll
over REST, send telemetry the bridge stores and acknowledges, and install what
their signed desired documents say. Two versions of a model are published over
the REST API and a staged rollout of the second starts; while it runs, each
process is killed with SIGKILL (the database is restarted) and started again a
few seconds later, each fault only once the rollout has moved on since the one
before, so every fault meets it in a new place.

What must hold afterwards: the rollout completes, every device is active on the
new version, each stage ran once and in order, no device was sent the version
twice, every telemetry record a device was acknowledged for is stored once
(per device, sequence numbers from 1 without a gap), and every process answers
ready on its probe. The agent's own kill loops are tests/agent/test_kill_*.py.

Both tests run under ``make chaos`` only: bringing the stack up and enrolling
the fleet alone takes about a minute on two cores, and one round of faults
three or four more, well past what ``make test`` has left. ``CHAOS_SEED``
replays the long run's fault order and timing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import os
import random
import shutil
import subprocess
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest

from simulator import live
from tests.brokers import free_port
from tests.registry.conftest import make_classifier, make_png_images, metadata_for
from tests.simulator.test_live import Running, fleet_scenario
from tests.stack import HOST, Stack, missing_services, production_stack

PG_BIN = Path(os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin"))
REDIS_URL = "redis://127.0.0.1:6379/11"
MODEL = "parts"
SITES, PER_SITE = 3, 10
DEVICES = SITES * PER_SITE
PLAN = {
    "stages": [
        {"kind": "count", "value": 1},
        {"kind": "percent", "value": 30},
        {"kind": "percent", "value": 60},
        {"kind": "percent", "value": 100},
    ]
}
# Seconds, not a production soak; the thresholds open, as a shared two-core machine's latency swings: the
# point here is that the rollout survives its processes, not what its gates judge.
GATES = {
    "soak_s": 6,
    "max_soak_extensions": 5,
    "activation_timeout_s": 600,
    "max_p95_latency_regression": 10.0,
    "max_error_rate_rise": 1.0,
    "max_confidence_drop": 1.0,
    "max_escalation_rate_rise": 1.0,
    "on_failure": "pause",
}
# The long run's: more stages, so three rounds of faults meet the rollout in more places.
LONG_PLAN = {
    "stages": [{"kind": "count", "value": 1}, *({"kind": "percent", "value": v} for v in (20, 40, 60, 80, 100))]
}
FAULTS = ("bridge", "worker", "beat", "broker", "postgres")
DOWN_S = 2.0  # how long a killed process stays down: a fault's length, not a wait for anything
READY_S = 120  # a restarted process's startup on a busy two-core machine
FINAL = ("completed", "halted", "reverted", "aborted")


class RolloutOver(Exception):
    """The rollout ended before every planned fault met it."""


# --- a private PostgreSQL cluster ---------------------------------------------------------------------


@dataclass
class Cluster:
    data: Path
    port: int
    log: Path

    @property
    def admin_dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def ctl(self, *args: str) -> None:
        subprocess.run(
            [
                "runuser",
                "-u",
                "postgres",
                "--",
                str(PG_BIN / "pg_ctl"),
                "-D",
                str(self.data),
                "-l",
                str(self.log),
                *args,
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )

    def restart(self, mode: str) -> None:
        """``fast``: clients cut, a checkpoint, a clean start; ``immediate``: as a crash, recovery from the WAL."""
        self.ctl("restart", "-w", "-m", mode)


def postgres_skip_reason() -> str | None:
    if not (PG_BIN / "initdb").exists():
        return f"no PostgreSQL binaries in {PG_BIN} (set PG_BIN)"
    if os.geteuid() != 0 or shutil.which("runuser") is None:
        return "a private PostgreSQL cluster runs as the postgres user: needs root and runuser"
    return None


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    reason = postgres_skip_reason() or missing_services(REDIS_URL)
    if reason:
        pytest.skip(reason)
    # Outside pytest's tmp (mode 0700, root's): the postgres user must reach it.
    home = Path(tempfile.mkdtemp(prefix="edgefleet-pg-"))
    shutil.chown(home, "postgres")
    data = home / "data"
    subprocess.run(
        ["runuser", "-u", "postgres", "--", str(PG_BIN / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"],
        check=True,
        capture_output=True,
        timeout=120,
    )
    port = free_port()
    # fsync off: a killed server loses nothing the kernel already has, and a restart here is a process's.
    settings = [f"port = {port}", "listen_addresses = '127.0.0.1'", f"unix_socket_directories = '{home}'"]
    settings += ["max_connections = 200", "fsync = off", "full_page_writes = off"]
    with (data / "postgresql.conf").open("a") as conf:
        conf.write("\n".join(settings) + "\n")
    running = Cluster(data, port, home / "postgres.log")
    running.ctl("start", "-w")
    try:
        yield running
    finally:
        with contextlib.suppress(subprocess.SubprocessError):
            running.ctl("stop", "-m", "immediate")
        shutil.rmtree(home, ignore_errors=True)


# --- the stack, the fleet, the versions ---------------------------------------------------------------


def publish(stack: Stack, version: str, seed: int) -> None:
    """``POST /api/v1/models/parts/versions/`` as CI does: the ONNX file, its metadata, reference images."""
    boundary = uuid.uuid4().hex
    parts: list[tuple[str, str, str, bytes]] = [
        ("model", "model.onnx", "application/octet-stream", make_classifier(seed=seed)),
        ("metadata", "", "", json.dumps(metadata_for(version)).encode()),
    ]
    parts += [("references", f"ref-{i}.png", "image/png", png) for i, png in enumerate(make_png_images())]
    body = b""
    for name, filename, content_type, content in parts:
        head = f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"'
        head += f'; filename="{filename}"\r\nContent-Type: {content_type}' if filename else ""
        body += f"{head}\r\n\r\n".encode() + content + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    request = urllib.request.Request(  # noqa: S310 - the stack's local URL
        f"{stack.web}/api/v1/models/{MODEL}/versions/",
        data=body,
        headers={
            "Host": HOST,
            "X-Forwarded-Proto": "https",
            "Authorization": f"Bearer {stack.api_token}",
            "Content-Type": f"multipart/form-data; boundary={boundary}",
        },
    )
    with urllib.request.urlopen(request, timeout=60) as answer:  # noqa: S310
        assert answer.status == 201, answer.read()[:2000]


def wait_for(condition: Callable[[], Any], timeout: float, what: str, describe: Callable[[], str] = str) -> Any:
    """Poll ``condition`` until it returns something true; that value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}: {describe()}")


class Database:
    """Read-only questions to the stack's database, each on a fresh connection (it may have just restarted)."""

    def __init__(self, url: str) -> None:
        self.url = url

    def rows(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        try:
            with psycopg.connect(self.url, connect_timeout=5) as conn:
                return conn.execute(sql, params).fetchall()  # type: ignore[arg-type]
        except psycopg.OperationalError:
            return []  # restarting: the caller polls again


@dataclass
class Scene:
    stack: Stack
    cluster: Cluster
    db: Database
    fleet: Running
    rollout: int = 0
    plan: dict[str, Any] = field(default_factory=lambda: PLAN)
    faults: list[tuple[str, str, tuple[Any, ...]]] = field(default_factory=list)

    def progress(self) -> tuple[Any, ...]:
        """Where the rollout is: its state, its stage, that stage's state, devices sent and devices active."""
        found = self.db.rows(
            "SELECT r.state, r.current_stage, s.state,"
            " (SELECT count(*) FROM rollouts_rolloutdevice d WHERE d.rollout_id = r.id AND d.state <> 'pending'),"
            " (SELECT count(*) FROM rollouts_rolloutdevice d WHERE d.rollout_id = r.id AND d.state = 'active')"
            " FROM rollouts_rollout r JOIN rollouts_rolloutstage s ON s.rollout_id = r.id AND s.index = r.current_stage"
            " WHERE r.id = %s",
            self.rollout,
        )
        return found[0] if found else ()

    def fault(self, name: str) -> None:
        """Kill ``name`` (restart PostgreSQL), leave it down a moment, start it again and wait until it is ready."""
        self.faults.append((name, time.strftime("%H:%M:%S"), self.progress()))
        if name == "postgres":
            self.cluster.restart("immediate" if len(self.faults) % 2 else "fast")
        else:
            self.stack.kill(name)
            time.sleep(DOWN_S)
            self.stack.restart(name)
        self.stack.wait_ready(timeout=READY_S)

    def describe(self) -> str:
        """Where the rollout is, the faults so far, each stage device not active yet: the server's view and its own."""
        waiting = self.db.rows(
            "SELECT v.device_id, d.state, d.generation, v.desired_generation, v.published_generation, v.online,"
            " v.reported FROM rollouts_rolloutdevice d JOIN fleet_device v ON v.id = d.device_id"
            " WHERE d.rollout_id = %s AND d.state NOT IN ('pending', 'active')",
            self.rollout,
        )
        sims = {d.sim.device_id: d.sim for d in (self.fleet.fleet.devices if self.fleet.fleet else [])}
        own = {row[0]: vars(sims[row[0]]).get("phase") for row in waiting if row[0] in sims}
        return f"progress {self.progress()}, faults {self.faults}, waiting {waiting}, on the devices {own}"


@pytest.fixture
def scene(cluster: Cluster, tmp_path: Path) -> Iterator[Scene]:
    env = {
        # An operator provisioning a fleet raises it (the simulator enrolls every device at once).
        "ENROLL_THROTTLE_RATE": "100000/minute",
        "ROLLOUT_TICK_INTERVAL_S": "1",
        "TELEMETRY_ROLLUP_INTERVAL_S": "5",
    }
    with production_stack(tmp_path, redis_url=REDIS_URL, env=env, admin_dsn=cluster.admin_dsn) as stack:
        stack.wait_ready()
        publish(stack, "1.0.0", seed=7)
        publish(stack, "2.0.0", seed=8)
        options = live.Options(
            server=stack.web,
            mqtt_url=stack.broker.url,
            api_token=stack.api_token,
            report_every_s=5,
            # The agent's 30 s would do as well; shorter keeps the run short.
            resend_after_s=10,
        )
        # A report a killed bridge or broker lost comes again within 30 s, as the agent's comes within its
        # report_interval_s (5 minutes by default).
        scenario = dataclasses.replace(fleet_scenario(SITES, PER_SITE), report_s=30.0)
        fleet = Running(scenario, options)
        try:
            fleet.wait_ready(120)
            yield Scene(stack, cluster, Database(stack.database_url), fleet)
        finally:
            fleet.stop()


def start_rollout(scene: Scene, plan: dict[str, Any] = PLAN) -> None:
    db = scene.db
    wait_for(
        lambda: db.rows(
            "SELECT count(*) FROM fleet_device WHERE online AND reported->>'model_version' = '1.0.0'"
            " AND reported->>'phase' = 'active' HAVING count(*) = %s",
            DEVICES,
        ),
        120,
        f"{DEVICES} devices online on 1.0.0",
    )
    # A few windows from each device before the first stage: the baseline its gates compare with.
    wait_for(
        lambda: db.rows(
            "SELECT 1 FROM (SELECT device_id FROM telemetry_telemetryrecord WHERE kind = 'window'"
            " GROUP BY device_id HAVING count(*) >= 2) d HAVING count(*) = %s",
            DEVICES,
        ),
        120,
        "two windows from every device",
    )
    status, body = scene.stack.api(
        "/api/v1/rollouts/",
        {"model": MODEL, "version": "2.0.0", "target": {"running_model": MODEL}, "plan": plan, "gates": GATES},
    )
    assert status == 201, body
    scene.rollout = body["id"]


def moved_on(scene: Scene, since: tuple[Any, ...], timeout: float, before: str) -> None:
    """Wait until the rollout is somewhere other than ``since`` (it resumed), still running."""

    def now() -> bool:
        progress = scene.progress()
        if progress and progress[0] in FINAL:
            raise RolloutOver(progress)
        return bool(progress) and progress != since and progress[0] == "running"

    wait_for(now, timeout, f"the rollout to move on before the {before} fault", scene.describe)


def run_faults(scene: Scene, faults: list[str], timeout: float, pause: Callable[[], float] = lambda: 0.0) -> None:
    """Each fault once the rollout moved on since the one before (the first at once), ``pause()`` seconds later."""
    last: tuple[Any, ...] = ()
    for name in faults:
        moved_on(scene, last, timeout, name)
        time.sleep(pause())  # a random point after the move, not a wait for anything
        scene.fault(name)
        last = scene.progress() or scene.faults[-1][2]


def assert_survived(scene: Scene, timeout: float) -> None:
    db = scene.db
    state = wait_for(
        lambda: (p := scene.progress()) and p[0] in FINAL and p,
        timeout,
        "the rollout to finish",
        scene.describe,
    )
    halt = db.rows("SELECT halt_reason FROM rollouts_rollout WHERE id = %s", scene.rollout)
    assert state[0] == "completed", (state, halt, scene.faults)
    # Every stage once, in order: started after the one before passed, passed once.
    stages = db.rows(
        "SELECT index, state, started_at, finished_at FROM rollouts_rolloutstage WHERE rollout_id = %s ORDER BY index",
        scene.rollout,
    )
    assert [(s[0], s[1]) for s in stages] == [(i, "passed") for i in range(len(scene.plan["stages"]))]
    for before, after in itertools.pairwise(stages):
        assert before[3] <= after[2], (before, after)
    audit = dict(
        db.rows(
            "SELECT action || ':' || coalesce(data->>'stage', ''), count(*) FROM core_auditlog"
            " WHERE target_type ILIKE '%%rollout%%' AND target_id = %s GROUP BY 1",
            str(scene.rollout),
        )
    )
    for index in range(len(scene.plan["stages"])):
        assert audit.get(f"rollout.stage_passed:{index}") == 1, audit
    assert audit.get("rollout.start:") == 1 and audit.get("rollout.complete:") == 1, audit
    # No device sent the version twice (two schedulers, a tick replayed after a kill).
    sent = db.rows(
        "SELECT target_id, count(*) FROM core_auditlog WHERE action = 'device.assign_model'"
        " AND data->>'version' = '2.0.0' GROUP BY target_id"
    )
    assert len(sent) == DEVICES and {n for _, n in sent} == {1}, sent
    entries = db.rows(
        "SELECT d.state, d.generation = v.desired_generation FROM rollouts_rolloutdevice d"
        " JOIN fleet_device v ON v.id = d.device_id WHERE d.rollout_id = %s",
        scene.rollout,
    )
    assert len(entries) == DEVICES and set(entries) == {("active", True)}, entries
    # Every device reports the new version active (reported by itself, through the bridge).
    wait_for(
        lambda: db.rows(
            "SELECT count(*) FROM fleet_device WHERE reported->>'model_version' = '2.0.0'"
            " AND reported->>'phase' = 'active' HAVING count(*) = %s",
            DEVICES,
        ),
        60,
        "every device to report 2.0.0 active",
    )
    # Telemetry: the unique key holds, and what a device was acknowledged for is all there (no gap from 1).
    assert (
        db.rows("SELECT device_id, seq FROM telemetry_telemetryrecord GROUP BY device_id, seq HAVING count(*) > 1")
        == []
    )
    gaps = db.rows(
        "SELECT device_id, min(seq), max(seq), count(*) FROM telemetry_telemetryrecord GROUP BY device_id"
        " HAVING min(seq) <> 1 OR max(seq) <> count(*)"
    )
    assert gaps == [], f"{gaps} {missing_telemetry(db)} {scene.faults}"
    assert len(db.rows("SELECT DISTINCT device_id FROM telemetry_telemetryrecord")) == DEVICES
    scene.stack.wait_ready()


def missing_telemetry(db: Database) -> list[tuple[Any, ...]]:
    """Each gap in a device's stored sequence numbers, with when the records on either side were received."""
    return db.rows(
        "SELECT device_id, seq + 1, next - 1,"
        " (SELECT received_at FROM telemetry_telemetryrecord t WHERE t.device_id = g.device_id AND t.seq = g.seq),"
        " (SELECT received_at FROM telemetry_telemetryrecord t WHERE t.device_id = g.device_id AND t.seq = g.next)"
        " FROM (SELECT device_id, seq, lead(seq) OVER (PARTITION BY device_id ORDER BY seq) AS next"
        " FROM telemetry_telemetryrecord) g WHERE next > seq + 1 ORDER BY device_id, seq LIMIT 20"
    )


@pytest.mark.chaos
@pytest.mark.timeout(600)
def test_a_rollout_survives_a_kill_of_each_process_and_a_database_restart(scene: Scene) -> None:
    started = time.monotonic()
    start_rollout(scene)
    run_faults(scene, list(FAULTS), timeout=120)
    assert_survived(scene, timeout=180)
    print("process faults, one round:", scene.faults, f"{time.monotonic() - started:.0f} s")


@pytest.mark.chaos
@pytest.mark.timeout(1800)
def test_a_rollout_survives_rounds_of_faults_at_random_points(scene: Scene) -> None:
    seed = os.environ.get("CHAOS_SEED") or str(random.randrange(10**6))
    rng = random.Random(seed)
    print("CHAOS_SEED", seed)
    start_rollout(scene, LONG_PLAN)
    scene.plan = LONG_PLAN
    # Three rounds, each kind once a round in a random order; fewer if the rollout ends first.
    faults = [name for _ in range(3) for name in rng.sample(FAULTS, len(FAULTS))]
    with contextlib.suppress(RolloutOver):
        run_faults(scene, faults, timeout=300, pause=lambda: rng.uniform(0, 3))
    assert_survived(scene, timeout=600)
    print("process faults, rounds:", scene.faults)

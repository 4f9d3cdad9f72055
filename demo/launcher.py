"""`make demo`: the whole system on one machine with embedded defaults.

Starts, as child processes: the embedded MQTT broker, the web server, the MQTT
bridge, a Celery worker with beat on the local filesystem transport, and one
real agent process per simulated device. Needs no PostgreSQL, Redis or
Mosquitto. ``--sim-devices N`` adds N simulated devices at their own sites: one
``edgefleet-sim run`` process (``demo.simfleet``). Ctrl-C stops everything,
newest first: the simulator, the agents, then the worker, the bridge, the web
server and last the broker, each waited for.

Each run starts clean: the previous run's database, devices, alerts and logs
are removed (the rendered camera frames and the measured model metadata are
kept, they only cost time). ``--keep`` continues the previous run's state
instead: the same devices, their history and any alert still open (the
simulated ones too: the simulator's state file keeps their identities).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from demo import rehearsal, simfleet
from demo import scene as demo_scene

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
SITES = {
    "plant-north": ("North Plant", "line-1-cam", 4),
    "depot-east": ("East Depot", "dock-cam", 4),
    "farm-south": ("South Farm", "barn-cam", 4),
}
HARDWARE = ["jetson-orin-nano", "raspberrypi-5", "x86-nuc", "jetson-orin-nano"]
# The simulator enrolls its devices with the label simulated=true.
SIM_ONLINE = "/api/v1/devices/?label=simulated=true&online=true&limit=1"
# How often the demo looks again while the simulated fleet comes online.
SIM_REPORT_S = 15.0


# What a clean start removes from the data directory: everything a run
# writes except the caches (``cameras``, ``publish``). Named one by one, so
# a --data-dir pointed at the wrong folder loses nothing else.
STATE = (
    "edgefleet.sqlite3",
    "edgefleet.sqlite3-wal",
    "edgefleet.sqlite3-shm",
    "devices",
    "sim",
    "celery",
    "media",
    "logs",
)
# How long one stage of the shutdown may take before it is killed.
STOP_TIMEOUT_S = 10.0


def free_port(preferred: int) -> int:
    for port in (preferred, 0):
        with socket.socket() as sock:
            # As the servers bind (asyncio's start_server, Django's runserver):
            # with SO_REUSEADDR, so the connections a previous run left in
            # TIME-WAIT on this port do not make it look taken. Without it a run
            # started within a minute of the last one moved its broker to a
            # random port, away from where the enrolled agents looked for it.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(sock.getsockname()[1])
    raise RuntimeError("no free port")


def wait_for_port(port: int, timeout: float, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{proc.args!r} exited with {proc.returncode} while starting")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"nothing listens on port {port} after {timeout:.0f} s")


def clear_state(data_dir: Path) -> list[str]:
    """Remove what a previous run left in ``data_dir`` (``STATE``); return what was there."""
    removed = []
    for name in STATE:
        path = data_dir / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
        else:
            continue
        removed.append(name)
    return removed


@dataclass
class Demo:
    data_dir: Path
    web_port: int
    mqtt_port: int
    sites: dict[str, tuple[str, str, int]] = field(default_factory=lambda: dict(SITES))
    # Publish the model and run inference on rendered frames; without it the agents only connect.
    with_model: bool = True
    # Simulated devices (edgefleet-sim) at their own sites, beside the real agents.
    sim_devices: int = 0
    # The version the demo published and assigned (set by start).
    published_version: str | None = None
    # Children in the order they started, in stages: a stage (the agents) starts and stops together.
    stages: list[list[tuple[str, subprocess.Popen[bytes]]]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.logs = self.data_dir / "logs"
        self.logs.mkdir(exist_ok=True)
        secret_file = self.data_dir / "bridge-password"
        if not secret_file.exists():
            secret_file.write_text(secrets.token_urlsafe(24))
            secret_file.chmod(0o600)
        mqtt_url = f"mqtt://127.0.0.1:{self.mqtt_port}"
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "MQTT_", "CELERY_", "BROKER_"))},
            "DJANGO_SETTINGS_MODULE": "config.settings",
            "EDGEFLEET_DATA_DIR": str(self.data_dir),
            "DATABASE_URL": f"sqlite:///{self.data_dir / 'edgefleet.sqlite3'}",
            "CELERY_BROKER_URL": "filesystem://",
            "MQTT_URL": mqtt_url,
            "DEVICE_MQTT_URL": mqtt_url,
            "MQTT_USERNAME": "edgefleet-bridge",
            "MQTT_PASSWORD_FILE": str(secret_file),
            "BROKER_PROVISIONER": "embedded",
            "HEARTBEAT_INTERVAL_S": "5",
            "DEVICE_OFFLINE_AFTER_S": "30",
            # Rollups and the rollout tick every few seconds: a demo's rollout moves in minutes.
            "TELEMETRY_ROLLUP_INTERVAL_S": "10",
            "ROLLOUT_TICK_INTERVAL_S": "5",
            "PYTHONUNBUFFERED": "1",
        }
        self.sim = simfleet.SimFleet(self.data_dir / "sim", self.sim_devices) if self.sim_devices else None
        if self.sim is not None:
            # The simulator enrolls its whole fleet from one address, as an operator provisioning a
            # fleet does: at the default 60/minute a thousand devices would take over a quarter of an hour.
            self.env["ENROLL_THROTTLE_RATE"] = "100000/minute"
        self.server = f"http://127.0.0.1:{self.web_port}"
        # The demo's own API token (set by start), and how many simulated devices it last said were online.
        self.api_token = ""
        self.sim_online_said: int | None = None
        self.mqtt_url = mqtt_url

    @property
    def children(self) -> list[tuple[str, subprocess.Popen[bytes]]]:
        return [child for stage in self.stages for child in stage]

    def say(self, text: str) -> None:
        print(text, flush=True)

    def manage(self, *args: str) -> str:
        result = subprocess.run(
            [sys.executable, str(ROOT / "manage.py"), *args], env=self.env, cwd=ROOT, capture_output=True, text=True
        )
        if result.returncode != 0:
            raise SystemExit(f"manage.py {' '.join(args)} failed:\n{result.stderr}")
        return result.stdout

    def spawn(
        self, name: str, *command: str, env: dict[str, str] | None = None, with_previous: bool = False
    ) -> subprocess.Popen[bytes]:
        """Start a child; ``with_previous`` puts it in the stage of the one before (stopped together)."""
        log = open(self.logs / f"{name}.log", "ab")
        # Own process group: Ctrl-C reaches the launcher only, which then
        # stops children in order instead of all at once.
        proc = subprocess.Popen(
            command,
            env={**self.env, **(env or {})},
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        if with_previous and self.stages:
            self.stages[-1].append((name, proc))
        else:
            self.stages.append([(name, proc)])
        return proc

    def start(self) -> dict[str, Any]:
        """Start everything; return the seed (admin login, API token)."""
        self.say("edgefleet demo: preparing the database (SQLite) ...")
        self.manage("migrate", "--noinput")
        specs = [
            f"{slug}:{name}:{','.join(f'{prefix}-{i + 1}' for i in range(count))}"
            for slug, (name, prefix, count) in self.sites.items()
        ]
        if self.sim is not None:
            # The simulated sites with their names, no enrollment tokens: the simulator issues its own.
            specs += [f"{slug}:{simfleet.SITES[slug][0]}:" for slug in simfleet.spread(self.sim.devices)]
        options = [f"--site={s}" for s in specs] + (["--sim-token"] if self.sim is not None else [])
        seed = json.loads(self.manage("demo_seed", *options).strip().splitlines()[-1])
        self.api_token = seed["api_token"]

        self.say(f"starting the embedded MQTT broker on 127.0.0.1:{self.mqtt_port} ...")
        broker = self.spawn(
            "broker", sys.executable, "manage.py", "embedded_broker", "--bind", f"127.0.0.1:{self.mqtt_port}"
        )
        wait_for_port(self.mqtt_port, 30, broker)

        self.say(f"starting the web server on {self.server} ...")
        web = self.spawn("web", sys.executable, "manage.py", "runserver", f"127.0.0.1:{self.web_port}", "--noreload")
        wait_for_port(self.web_port, 60, web)

        self.say("starting the MQTT bridge and the worker ...")
        # The embedded broker has no shared subscriptions: one bridge subscribes directly.
        self.spawn("bridge", sys.executable, "manage.py", "mqtt_bridge", "--shared-group", "")
        for folder in ("queue", "processed", "control"):
            (self.data_dir / "celery" / folder).mkdir(parents=True, exist_ok=True)
        self.spawn(
            "worker",
            str(BIN / "celery"),
            "-A",
            "config",
            "worker",
            "-B",
            "--loglevel=INFO",
            "--concurrency=1",
            "--pool=solo",
            # The default queue and the cloud model's (escalated frames); a GPU host would run its own worker on it.
            "--queues=celery,cloud",
        )
        published = None
        if self.with_model:
            self.say(
                f"publishing the {demo_scene.MODEL} model as CI would (edgefleet publish, with an INT8 variant) ..."
            )
            published = demo_scene.publish_model(BIN, self.server, seed["api_token"], self.data_dir / "publish")
            self.published_version = str(published["version"])
            self.say(f"publishing the {demo_scene.CLOUD_MODEL} model (role cloud): it answers escalated frames ...")
            demo_scene.publish_cloud_model(BIN, self.server, seed["api_token"], self.data_dir / "publish")
        self.start_devices(seed["tokens"])
        if published is not None:
            # The real agents' sites only: with --keep the simulated devices are enrolled already,
            # and they report the scenario's model without being sent it.
            ids = demo_scene.device_ids(self.server, seed["api_token"], self.sites)
            demo_scene.assign_model(self.server, seed["api_token"], str(published["version"]), list(ids.values()))
            self.say(f"assigned {demo_scene.MODEL} {published['version']} to every device (download, verify, install)")
            dark = "/".join(demo_scene.DARK_CAMERA)
            self.say(f"  {dark} has a failed lamp: its dark frames should raise a drift alert, and it escalates")
            self.say("  unsure frames to the cloud model; disagreements wait for review")
        online = self.start_simulator(seed["sim_token"]) if self.sim is not None else None
        self.say("")
        self.say(f"  dashboard : {self.server}/")
        self.say(f"  API docs  : {self.server}/api/v1/docs/")
        self.say(f"  login     : {seed['username']} / {seed['password']}")
        self.say(f"  API token : {seed['api_token']}")
        self.say(f"  try       : curl -H 'Authorization: Bearer {seed['api_token']}' {self.server}/api/v1/devices/")
        self.say(f"  sites     : {self.server}/ (a site's page has its devices, alerts and the Rollback button)")
        self.say(f"  review    : {self.server}/escalations/ (escalated frames; keys e, c, 1-9, j/k, ? for help)")
        self.say(f"  advisor   : {self.server}/escalations/advisor/ (the threshold curve, with Apply)")
        self.say(f"  export    : {self.server}/escalations/export/ (reviewed frames as a dataset zip)")
        if self.sim is not None:
            sites = ", ".join(simfleet.spread(self.sim.devices))
            self.say(f"  simulated : {online} of {self.sim.devices} online at {sites} (?label=simulated=true)")
        self.say(f"  logs      : {self.logs}/")
        self.say("")
        return dict(seed)

    def offer_release(self, token: str) -> None:
        """Publish a good release that waits on the Models page for someone to start its rollout."""
        if self.published_version is None:
            return
        rehearsal.Rehearsal(self.server, token, BIN, self.data_dir / "publish", self.say).offer()
        self.say(f"  rollouts  : on {self.server}/models/ press Start rollout beside {rehearsal.GOOD}, then watch")
        self.say("              its stages on the Rollouts page; python -m demo --rollouts (make demo")
        self.say("              DEMO_FLAGS=--rollouts) sends a good and a bad release through staged rollouts itself")

    def rehearse_rollouts(self, token: str) -> None:
        """Send a good and a bad release through staged rollouts (``demo.rehearsal``); keep the figures."""
        if self.published_version is None:
            raise SystemExit("--rollouts needs the demo's model; it was not published")
        figures = rehearsal.Rehearsal(self.server, token, BIN, self.data_dir / "publish", self.say).run(
            self.published_version
        )
        (self.logs / "rollouts.json").write_text(json.dumps(figures, indent=1))
        self.say(f"  figures   : {self.logs / 'rollouts.json'}")

    def start_devices(self, tokens: dict[str, dict[str, str]]) -> None:
        devices = []
        for slug, (_, prefix, number) in self.sites.items():
            for i in range(number):
                name = f"{prefix}-{i + 1}"
                devices.append((slug, name, self.data_dir / "devices" / slug / name, HARDWARE[i % len(HARDWARE)]))
        # Enroll the new ones side by side: each is a separate agent process, as on real devices.
        enrolling = []
        for slug, name, device_dir, hardware in devices:
            if (device_dir / "agent.toml").exists():
                continue
            token = tokens.get(slug, {}).get(name)
            if token is None:
                raise SystemExit(f"{name} at {slug} is enrolled but its config {device_dir / 'agent.toml'} is missing")
            enrolling.append((name, self.enroll(slug, name, token, device_dir, hardware)))
        for name, proc in enrolling:
            out, _ = proc.communicate(timeout=120)
            if proc.returncode != 0:
                raise SystemExit(f"enrolling {name} failed:\n{out}")
        cameras: dict[bool, Path] = {}
        if self.with_model:
            self.say("rendering the cameras' frames ...")
            cameras = {
                dark: demo_scene.write_frames(self.data_dir / "cameras" / ("dark" if dark else "normal"), dark=dark)
                for dark in (False, True)
            }
        # This run's addresses, not those written into agent.toml at enrollment:
        # a run with --keep may have found a port taken and moved.
        addresses = {"EDGEFLEET_AGENT_SERVER_URL": self.server, "EDGEFLEET_AGENT_MQTT_URL": self.mqtt_url}
        for index, (slug, name, device_dir, _) in enumerate(devices):
            config = str(device_dir / "agent.toml")
            env = dict(addresses)
            if cameras:
                env.update(demo_scene.agent_environment(cameras[(slug, name) == demo_scene.DARK_CAMERA]))
            self.spawn(
                f"agent-{slug}-{name}",
                str(BIN / "edgefleet-agent"),
                "run",
                "--config",
                config,
                env=env,
                with_previous=index > 0,
            )
        self.say(f"started {len(devices)} devices (real agent processes) at {len(self.sites)} sites")

    def start_simulator(self, sim_token: str) -> int:
        """Start ``edgefleet-sim run`` on the demo's sites; wait until its devices are online; return how many are."""
        assert self.sim is not None
        enrolled = self.sim.state_path.exists()
        self.sim.write_scenario()
        self.say(
            f"starting {self.sim.devices} simulated devices (edgefleet-sim, one process): "
            + ("the enrolled ones continue, " if enrolled else "")
            + "enrolling over the REST API ..."
        )
        command = self.sim.command(sys.executable, self.server, self.mqtt_url)
        proc = self.spawn("sim", *command, env={"EDGEFLEET_API_TOKEN": sim_token})
        # Enrolling takes a few ms a device, connecting 1/CONNECT_PER_S s, a heartbeat reaching the
        # control plane a few seconds more; a thousand on two busy cores come online within a minute or two.
        deadline = time.monotonic() + 60 + self.sim.devices / 10
        online = 0
        while time.monotonic() < deadline and proc.poll() is None:
            online = self.sim_online() or online
            if online >= self.sim.devices:
                break
            time.sleep(1)
        if proc.poll() is not None:
            raise SystemExit(f"edgefleet-sim exited with {proc.returncode}; see {self.logs / 'sim.log'}")
        self.sim_online_said = online
        return online

    def sim_online(self) -> int | None:
        """How many simulated devices the control plane has online; None while it does not answer."""
        try:
            return int(demo_scene.api(self.server, self.api_token, "GET", SIM_ONLINE)["count"])
        except (OSError, ValueError):
            return None

    def enroll(self, slug: str, name: str, token: str, device_dir: Path, hardware: str) -> subprocess.Popen[str]:
        device_dir.mkdir(parents=True, exist_ok=True)
        return subprocess.Popen(
            [
                str(BIN / "edgefleet-agent"),
                "enroll",
                "--server",
                self.server,
                "--token",
                token,
                "--name",
                name,
                "--site",
                slug,
                "--hardware-profile",
                hardware,
                "--config",
                str(device_dir / "agent.toml"),
                "--data-dir",
                str(device_dir / "data"),
            ],
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def watch(self, stop_after: float | None) -> None:
        deadline = time.monotonic() + stop_after if stop_after else None
        reported: set[str] = set()
        next_count = time.monotonic() + SIM_REPORT_S
        while deadline is None or time.monotonic() < deadline:
            for name, proc in self.children:
                if proc.poll() is not None and name not in reported:
                    reported.add(name)
                    self.say(f"warning: {name} exited with {proc.returncode}; see {self.logs / (name + '.log')}")
            # A large fleet may still be enrolling when the demo is ready: say how far it has come.
            if self.sim is not None and time.monotonic() >= next_count:
                next_count = time.monotonic() + SIM_REPORT_S
                online = self.sim_online()
                if online is not None and online != self.sim_online_said:
                    self.sim_online_said = online
                    self.say(f"simulated devices online: {online} of {self.sim.devices}")
            time.sleep(1)

    def stop(self) -> None:
        """Stop the children newest first, one stage at a time, each waited for before the next.

        The agents go first, each saying ``offline`` while the bridge still
        listens; the broker goes last, so nothing reconnects to a closing broker.
        """
        self.say("stopping ...")
        for stage in reversed(self.stages):
            running = [(name, proc) for name, proc in stage if proc.poll() is None]
            for _, proc in running:
                proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + STOP_TIMEOUT_S
            for name, proc in running:
                try:
                    proc.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    self.say(f"{name} did not stop in time; killing it")
                    proc.kill()
                    proc.wait()
        self.say("stopped.")


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m demo", description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=ROOT / "var" / "demo")
    parser.add_argument("--web-port", type=int, default=8000)
    parser.add_argument("--mqtt-port", type=int, default=18830)
    parser.add_argument("--stop-after", type=float, help="stop by itself after this many seconds")
    parser.add_argument(
        "--keep",
        action="store_true",
        help="continue the previous run's state (database, devices, alerts) instead of starting clean",
    )
    parser.add_argument(
        "--sim-devices",
        type=int,
        default=0,
        metavar="N",
        help="also run N simulated devices (edgefleet-sim, one process) at four sim-* sites of their own",
    )
    parser.add_argument(
        "--rollouts",
        action="store_true",
        help="once the devices run the model, publish a good and a bad release through staged rollouts and follow them",
    )
    args = parser.parse_args(argv)
    if args.sim_devices < 0:
        parser.error("--sim-devices must be 0 or more")
    if args.sim_devices and args.rollouts:
        # The rehearsal's canary would as likely be a simulated device, which runs a bad release as well
        # as a good one: the gates are shown on the real agents' figures.
        parser.error("--rollouts runs on the real agents only; leave out --sim-devices")
    data_dir = args.data_dir.resolve()
    if args.keep:
        print(f"continuing the previous demo in {data_dir} (its devices, history and open alerts)", flush=True)
    elif removed := clear_state(data_dir):
        print(f"starting clean: removed the previous run's {', '.join(removed)} from {data_dir}", flush=True)
        print("  (python -m demo --keep continues a previous run instead)", flush=True)
    demo = Demo(
        data_dir=data_dir,
        web_port=free_port(args.web_port),
        mqtt_port=free_port(args.mqtt_port),
        sim_devices=args.sim_devices,
    )
    # SIGINT explicitly too: a launcher started in the background by a script inherits it ignored.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _interrupt)
    try:
        seed = demo.start()
        if args.rollouts:
            demo.rehearse_rollouts(seed["api_token"])
        else:
            demo.offer_release(seed["api_token"])
        demo.say("")
        demo.say("Press Ctrl-C to stop everything.")
        demo.watch(args.stop_after)
    except KeyboardInterrupt:
        pass
    finally:
        demo.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

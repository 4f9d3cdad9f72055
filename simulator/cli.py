"""``edgefleet-sim``: check a scenario, trace it offline, run it live, ask what a rollout plan would do.

* ``check``: parse and validate a scenario; print its fleet.
* ``trace``: run it in simulated time with no broker and print what devices publish
  (counts, or one device's messages as JSON lines): the same seed gives the same lines.
* ``run``: enroll the scenario's devices over the REST API and run them on the broker.
* ``what-if``: run a rollout plan on the scenario's fleet through the control plane's
  ``POST /api/v1/rollouts/what-if/`` (the real plan parser and gates live there) and print the verdict.

Exit codes: 0 done (``what-if``: the verdict is ``caught`` or ``completed``), 1 the run failed,
2 a bad argument or scenario, 3 ``what-if``: ``not_caught`` or ``false_alarm``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from agent.kernel import logs
from simulator import behaviour, live, offline, verdict
from simulator import scenario as scenarios
from simulator.scenario import ScenarioError

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_VERDICT = 0, 1, 2, 3


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
    except ScenarioError as exc:
        print(f"edgefleet-sim: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except live.LiveError as exc:
        print(f"edgefleet-sim: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return EXIT_FAILED
    return code


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgefleet-sim", description="Simulated edgefleet devices.")
    sub = parser.add_subparsers(required=True, metavar="command")

    check = sub.add_parser("check", help="validate a scenario and print its fleet")
    check.add_argument("scenario", type=Path)
    check.set_defaults(func=_check)

    trace = sub.add_parser("trace", help="run a scenario offline (no broker) and print what the devices publish")
    trace.add_argument("scenario", type=Path)
    trace.add_argument("--seconds", type=float, help="how long (default: the scenario's duration)")
    trace.add_argument("--device", help="print this device's messages (its name, e.g. plant-001-0001)")
    trace.add_argument("--seed", type=int, help="override the scenario's seed")
    trace.set_defaults(func=_trace)

    run = sub.add_parser("run", help="enroll the devices and run them live on the broker")
    run.add_argument("scenario", type=Path)
    run.add_argument("--server", required=True, help="control plane URL, e.g. http://127.0.0.1:8000")
    run.add_argument("--mqtt", help="broker URL (default: what enrollment answers)")
    run.add_argument(
        "--api-token",
        default=os.environ.get("EDGEFLEET_API_TOKEN"),
        help="admin API token (fleet scope): creates missing sites and one enrollment token per device",
    )
    run.add_argument(
        "--enrollment-token",
        action="append",
        default=[],
        help="an enrollment token (repeat: one per device to enroll, in fleet order; their sites are the tokens')",
    )
    run.add_argument("--state", type=Path, help="keep enrolled identities here (mode 0600) and reuse them")
    run.add_argument("--duration", type=float, help="seconds to run (default: the scenario's duration)")
    run.add_argument("--connect-rate", type=float, default=1000.0, help="connections opened per second")
    run.add_argument("--no-uploads", action="store_true", help="do not upload escalated frames' metadata")
    run.add_argument("--json", action="store_true", help="print the report as one JSON object")
    run.set_defaults(func=_run)

    whatif = sub.add_parser("what-if", help="would a rollout plan catch a bad model? (through the control plane)")
    whatif.add_argument("scenario", type=Path)
    whatif.add_argument("--plan", type=Path, required=True, help='JSON: {"stages": [...]} (docs/rollouts.md)')
    whatif.add_argument("--gates", type=Path, help="JSON: gate settings over the defaults")
    whatif.add_argument("--candidate", default="candidate", help="the version rolled out")
    whatif.add_argument(
        "--model-fault",
        action="append",
        default=[],
        help="a fault of the candidate, e.g. hardware=rpi5,latency_factor=3 (repeatable; keys of a bad_model fault)",
    )
    whatif.add_argument("--target-site", action="append", default=[], help="only these sites (repeatable)")
    whatif.add_argument("--target-hardware", action="append", default=[], help="only these profiles (repeatable)")
    whatif.add_argument("--start-s", type=float, default=0.0, help="when the rollout starts, in scenario seconds")
    whatif.add_argument("--server", default=os.environ.get("EDGEFLEET_SERVER"), help="control plane URL")
    whatif.add_argument(
        "--token", default=os.environ.get("EDGEFLEET_API_TOKEN"), help="API token with the rollout scope"
    )
    whatif.add_argument("--json", action="store_true", help="print the control plane's answer as it is")
    whatif.set_defaults(func=_what_if)
    return parser


# --- check and trace ---------------------------------------------------------------------


def _check(args: argparse.Namespace) -> int:
    scenario = scenarios.load(args.scenario)
    specs = behaviour.fleet(scenario)
    print(f"{scenario.name}: {len(specs)} devices at {len(scenario.site_slugs)} sites, seed {scenario.seed}")
    mix = Counter(s.hardware for s in specs)
    print("hardware: " + ", ".join(f"{name} {count}" for name, count in sorted(mix.items())))
    uplinks = behaviour.site_uplinks(scenario)
    print(f"uplinks: {min(uplinks.values()):g} to {max(uplinks.values()):g} kbit/s")
    for fault in scenario.faults:
        where = fault.site or fault.hardware or "every profile"
        print(f"fault: {fault.kind} at {fault.at_s:g} s ({where}{', ' + fault.version if fault.version else ''})")
    return EXIT_OK


def _trace(args: argparse.Namespace) -> int:
    document = scenarios.read(args.scenario)
    if args.seed is not None:
        document["seed"] = args.seed
    scenario = scenarios.parse(document)
    devices, trace = offline.simulate(scenario, until_s=args.seconds)
    if args.device:
        device_id = f"sim-{args.device}"
        if device_id not in trace.by_device:
            print(f"edgefleet-sim: no device {args.device!r} in the scenario", file=sys.stderr)
            return EXIT_USAGE
        for suffix, payload in trace.by_device[device_id]:
            print(json.dumps({"topic": suffix, "payload": json.loads(payload)}, separators=(",", ":")))
        return EXIT_OK
    kinds: Counter[str] = Counter(suffix for messages in trace.by_device.values() for suffix, _ in messages)
    records = sum(d.counters.records for d in devices)
    print(f"{len(devices)} devices, {sum(kinds.values())} messages ({dict(sorted(kinds.items()))}), {records} records")
    return EXIT_OK


# --- live ------------------------------------------------------------------------------------


def _run(args: argparse.Namespace) -> int:
    logs.configure("INFO", "logfmt")
    scenario = scenarios.load(args.scenario)
    if not args.server.startswith(("http://", "https://")):
        print("edgefleet-sim: --server must be an http(s) URL", file=sys.stderr)
        return EXIT_USAGE
    options = live.Options(
        server=args.server,
        mqtt_url=args.mqtt,
        api_token=args.api_token,
        enrollment_tokens=list(args.enrollment_token),
        state_path=args.state,
        duration_s=args.duration,
        connect_per_s=args.connect_rate,
        uploads=not args.no_uploads,
    )
    report = asyncio.run(live.run(scenario, options, on_ready=_stop_on_sigterm))
    if args.json:
        print(json.dumps(report.as_json()))
    else:
        data = report.as_json()
        print(
            f"{data['devices']} devices, peak {data['connected_peak']} connected; {data['published']} published, "
            f"{data['received']} received in {data['wall_s']:.0f} s ({data['messages_per_s']} msg/s); "
            f"CPU {data['cpu_percent']} %, max RSS {data['max_rss_mb']:.0f} MiB; desired accepted "
            f"{data['desired_accepted']}, refused {data['desired_refused']}; running {data['versions']}"
        )
    return EXIT_OK


def _stop_on_sigterm(fleet: live.LiveFleet) -> None:
    # SIGTERM (a service manager, the demo launcher) ends the run as SIGINT does: every device says
    # ``offline`` and disconnects, and the report is printed, instead of the process vanishing mid-message.
    fleet.loop.add_signal_handler(signal.SIGTERM, fleet.stop)


# --- what-if -----------------------------------------------------------------------------------


def _what_if(args: argparse.Namespace) -> int:
    if not args.server or not args.server.startswith(("http://", "https://")):
        print("edgefleet-sim: what-if needs --server (an http(s) URL) or EDGEFLEET_SERVER", file=sys.stderr)
        return EXIT_USAGE
    if not args.token:
        print("edgefleet-sim: what-if needs --token (rollout scope) or EDGEFLEET_API_TOKEN", file=sys.stderr)
        return EXIT_USAGE
    scenarios.load(args.scenario)  # refused here, with the key at fault, before the request
    body: dict[str, Any] = {
        "scenario": args.scenario.read_text(encoding="utf-8"),
        "plan": _json_file(args.plan, "--plan"),
        "candidate": args.candidate,
        "start_s": args.start_s,
    }
    if args.gates:
        body["gates"] = _json_file(args.gates, "--gates")
    if args.model_fault:
        body["model_faults"] = [scenarios.parse_pairs(text) for text in args.model_fault]
    target: dict[str, Any] = {}
    if args.target_site:
        target["sites"] = args.target_site
    if args.target_hardware:
        target["hardware_profiles"] = args.target_hardware
    if target:
        body["target"] = target
    api = live.Api(args.server, api_token=args.token, timeout=600)
    status, answer, _ = api.call(
        "POST", "/api/v1/rollouts/what-if/", body, headers={"Authorization": f"Bearer {args.token}"}
    )
    if status != 200 or not isinstance(answer, dict):
        print(f"edgefleet-sim: what-if refused (HTTP {status}): {json.dumps(answer)}", file=sys.stderr)
        return EXIT_USAGE if status == 400 else EXIT_FAILED
    if args.json:
        print(json.dumps(answer))
    else:
        print("\n".join(verdict.lines(answer)))
    return EXIT_OK if answer["verdict"] in ("caught", "completed") else EXIT_VERDICT


def _json_file(path: Path, option: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ScenarioError(option, f"{path}: {exc}") from None


if __name__ == "__main__":
    logging.basicConfig()
    sys.exit(main())

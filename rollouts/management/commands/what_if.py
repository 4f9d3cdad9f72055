"""``manage.py what_if``: a what-if run of a rollout plan on the control plane's host, without the API.

The same run as ``POST /api/v1/rollouts/what-if/`` and ``edgefleet-sim what-if``
(``rollouts.whatif``), for an operator on a control-plane host, with no
device limit. Prints the verdict, or the answer's JSON with ``--json``.
Exits 3 when the verdict is ``not_caught`` or ``false_alarm``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from core.errors import ServiceError
from rollouts import whatif
from simulator import scenario as scenarios
from simulator import verdict


class Command(BaseCommand):
    help = "Run a rollout plan on a simulated fleet and print whether it would catch a bad candidate."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("scenario", type=Path, help="a scenario TOML file (docs/simulator.md)")
        parser.add_argument("--plan", type=Path, required=True, help='JSON: {"stages": [...]}')
        parser.add_argument("--gates", type=Path, help="JSON: gate settings over the defaults")
        parser.add_argument("--candidate", default="candidate", help="the version rolled out")
        parser.add_argument(
            "--model-fault", action="append", default=[], help="e.g. hardware=rpi5,latency_factor=3 (repeatable)"
        )
        parser.add_argument("--target-site", action="append", default=[])
        parser.add_argument("--target-hardware", action="append", default=[])
        parser.add_argument("--start-s", type=float, default=0.0)
        parser.add_argument("--json", action="store_true", help="print the answer as JSON")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            scenario = whatif.scenario_from(scenarios.read(options["scenario"]))
            target: dict[str, Any] = {}
            if options["target_site"]:
                target["sites"] = options["target_site"]
            if options["target_hardware"]:
                target["hardware_profiles"] = options["target_hardware"]
            faults = [scenarios.parse_pairs(text) for text in options["model_fault"]]
            result = whatif.run(
                scenario,
                _json(options["plan"]),
                candidate=options["candidate"],
                gate_overrides=_json(options["gates"]) if options["gates"] else None,
                target=target or None,
                model_faults=whatif.faults_from(faults, scenario, options["candidate"]),
                start_s=options["start_s"],
            )
        except (ServiceError, scenarios.ScenarioError) as exc:
            raise CommandError(str(exc)) from None
        answer = result.as_json()
        self.stdout.write(json.dumps(answer) if options["json"] else "\n".join(verdict.lines(answer)))
        if answer["verdict"] not in ("caught", "completed"):
            sys.exit(3)


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CommandError(f"{path}: {exc}") from None

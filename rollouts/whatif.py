"""What-if runs of a rollout plan on a simulated fleet: would it catch a bad model, what would it touch, how long.

A plan, its gate settings and a candidate version are run against a
scenario's simulated devices (``simulator.behaviour``) in simulated time, tick
by tick as the scheduler (``rollouts.scheduler``) would move a real rollout:

* the plan is parsed and the gates merged by the real ``rollouts.plan``, and
  the target split into stages by the real ``rollouts.services.split_stages``;
* each stage sends the version as ``_release`` would (the per-site download
  cap, ``ROLLOUT_SEND_CHUNK`` devices a tick); each device downloads over its
  site's link, shared fairly by the downloads in flight there
  (``behaviour.shared_link_finish``), from when its link is up; it becomes
  active, or failed where a ``bad_model`` fault fails validation on its
  hardware, or silent past ``activation_timeout_s`` (dead, or its site offline);
* the activation and soak gates are the real ones of ``rollouts.gates`` and
  the canary analysis the real ``rollouts.analysis.judge``, fed with the
  simulated devices' windows in memory instead of the database's rollups: the
  site latency budget and the matched control group are computed here the
  way ``gates.site_latency_budget`` and ``telemetry.baseline.matched_control``
  compute them from rows. The drift gate is not run: a scenario has no
  reference distribution published from CI (the real gate skips such a version
  too). Stages that need approval are taken as approved at once.

Pure computation on the request's data: no database, no broker, nothing
stored. ``run()`` raises ``ServiceError`` (``invalid_scenario``,
``invalid_plan``, ``invalid_gates``, ``invalid_target``, ``empty_target``,
``whatif_too_large``) for the API's one error shape.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, cast

from django.conf import settings as django_settings

from core.errors import ServiceError
from rollouts import analysis, gates, services
from rollouts import plan as plans
from simulator import behaviour
from simulator import scenario as scenarios
from simulator.behaviour import DeviceSpec, Effect, Figures
from simulator.device import VALIDATE_S, VERIFY_BYTES_PER_S
from simulator.scenario import Fault, Scenario, ScenarioError
from telemetry.baseline import METRICS, BaselineComparison, Figure, baseline_window_start
from telemetry.metrics import Summary

# A what-if over the API simulates at most this many devices (5,000 through four stages: about 10 s here).
MAX_API_DEVICES = 5_000
# Canary analysis samples: at most this many stage devices, each with at most its last this many windows
# (50 device-minutes a side is what the analysis needs; past a million pairs it thins them anyway).
MAX_SAMPLED_DEVICES = 100
MAX_SAMPLED_WINDOWS = 120
# The number a device's stretch (all its windows of one side, drawn at once) takes in its random streams.
_STRETCH = 10_000_000
# Windows before the rollout (the baseline) are numbered up from here, so no number is negative.
_EPOCH = 1_000_000


@dataclass
class _Device:
    """What ``services.split_stages`` reads of a device (id, site, online), and what the run tracks."""

    spec: DeviceSpec
    device_id: str
    site_id: int
    online: bool
    sent_at: float | None = None
    link_at: float | None = None
    finished_at: float | None = None
    state: str = "pending"  # pending, assigned, active, failed, silent


@dataclass
class StageReport:
    index: int
    kind: str
    value: int
    devices: int
    shadow: bool = False
    requires_approval: bool = False
    started_at_s: float | None = None
    all_active_at_s: float | None = None
    judged_at_s: float | None = None
    sent: int = 0
    active: int = 0
    failed: int = 0
    silent: int = 0
    verdict: str = "not_reached"
    soak_extensions: int = 0
    gates: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class WhatIf:
    verdict: str  # caught, not_caught, false_alarm, completed
    summary: str
    candidate: str
    faulty: bool
    halted_at_stage: int | None
    failed_gates: list[str]
    devices_in_target: int
    devices_touched: int
    devices_failed: int
    devices_on_candidate: int
    duration_s: float
    stages: list[StageReport]
    settings: dict[str, Any]

    def as_json(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "summary": self.summary,
            "candidate": self.candidate,
            "faulty": self.faulty,
            "halted_at_stage": self.halted_at_stage,
            "failed_gates": self.failed_gates,
            "devices_in_target": self.devices_in_target,
            "devices_touched": self.devices_touched,
            "devices_failed": self.devices_failed,
            "devices_on_candidate": self.devices_on_candidate,
            "duration_s": round(self.duration_s, 1),
            "stages": [_stage_json(s) for s in self.stages],
            "gates": self.settings,
        }


def _stage_json(stage: StageReport) -> dict[str, Any]:
    return {
        "index": stage.index,
        "kind": stage.kind,
        "value": stage.value,
        "shadow": stage.shadow,
        "requires_approval": stage.requires_approval,
        "devices": stage.devices,
        "sent": stage.sent,
        "active": stage.active,
        "failed": stage.failed,
        "silent": stage.silent,
        "started_at_s": stage.started_at_s,
        "all_active_at_s": stage.all_active_at_s,
        "judged_at_s": stage.judged_at_s,
        "soak_extensions": stage.soak_extensions,
        "verdict": stage.verdict,
        "gates": stage.gates,
    }


def scenario_from(document: Any, field_name: str = "scenario") -> Scenario:
    """A scenario from its JSON (the TOML file's keys) or its TOML text; a refusal names the key at fault."""
    try:
        return scenarios.loads(document) if isinstance(document, str) else scenarios.parse(document)
    except ScenarioError as exc:
        where = f"{field_name}.{exc.where}" if exc.where else field_name
        raise ServiceError("invalid_scenario", str(exc), 400, fields={where: [exc.message]}) from None


def faults_from(documents: Any, scenario: Scenario, candidate: str, field_name: str = "model_faults") -> list[Fault]:
    """``bad_model`` faults of the candidate (``version`` defaults to it); a refusal names the key at fault."""
    if documents is None:
        return []
    if not isinstance(documents, list) or len(documents) > 50:
        raise ServiceError("invalid_scenario", "model_faults is a list of at most 50 faults.", 400, fields={
            field_name: ["A list of at most 50 faults."]
        })  # fmt: skip
    out = []
    for i, document in enumerate(documents):
        where = f"{field_name}[{i}]"
        if not isinstance(document, Mapping):
            raise ServiceError(
                "invalid_scenario", f"{where}: a fault is an object.", 400, fields={where: ["An object."]}
            )
        table = {"kind": "bad_model", "version": candidate, **document}
        try:
            out.append(scenarios.parse_fault(table, where, scenario.hardware, list(scenario.site_slugs)))
        except ScenarioError as exc:
            raise ServiceError("invalid_scenario", str(exc), 400, fields={exc.where: [exc.message]}) from None
    return out


def run(
    scenario: Scenario,
    plan: Any,
    *,
    candidate: str = "candidate",
    gate_overrides: Any = None,
    target: Any = None,
    model_faults: Sequence[Fault] = (),
    start_s: float = 0.0,
    tick_s: float | None = None,
    max_devices: int | None = None,
) -> WhatIf:
    """Run ``plan`` for ``candidate`` on the scenario's fleet from ``start_s`` (scenario seconds)."""
    stages = plans.parse_plan(plan)
    settings = plans.effective_gates(plans.parse_gates(gate_overrides))
    tick = float(tick_s or django_settings.ROLLOUT_TICK_INTERVAL_S)
    chunk = int(django_settings.ROLLOUT_SEND_CHUNK)
    specs = behaviour.fleet(scenario)
    chosen = _target(specs, target, scenario.model.name)
    if max_devices is not None and len(chosen) > max_devices:
        raise ServiceError(
            "whatif_too_large",
            f"The target has {len(chosen)} devices; a what-if over the API takes at most {max_devices:,}. "
            "Run it with edgefleet-sim what-if instead.",
            400,
            fields={"scenario": [f"At most {max_devices} devices in the target."]},
        )
    sim = _Run(scenario, settings, candidate, list(model_faults), start_s, tick, chunk)
    devices = [_Device(spec, spec.name, sim.site_ids[spec.site], sim.link_up(spec, start_s)) for spec in chosen]
    by_id = {d.device_id: d for d in devices}
    split = services.split_stages(stages, cast(Any, devices), f"whatif:{scenario.seed}:{candidate}")
    reports = [
        StageReport(i, s.kind, s.value, len(group), s.shadow, s.requires_approval)
        for i, (s, group) in enumerate(zip(stages, split, strict=True))
    ]
    t = start_s
    halted: StageReport | None = None
    failing: list[str] = []
    for stage, group, report in zip(stages, split, reports, strict=True):
        members = [by_id[d.device_id] for d in group]
        later = [d for d in devices if d.state == "pending" and d not in members]
        if not members:
            report.verdict, report.started_at_s = gates.PASS, t - start_s
            continue
        t, failing = sim.stage(stage, members, later, report, t)
        if failing:
            halted = report
            break
        t += tick
    touched = [d for d in devices if d.sent_at is not None]
    failed = [d for d in devices if d.state == "failed"]
    on_candidate = [d for d in devices if d.state == "active"]
    if halted is not None and settings["on_failure"] == "revert":
        on_candidate = []  # the stage's devices go back to the version they ran
    faulty = any(_effect(scenario, candidate, d.spec.hardware, model_faults).faulty for d in devices)
    duration = t - start_s
    if halted is not None:
        verdict = "caught" if faulty else "false_alarm"
        summary = (
            f"{'caught' if faulty else 'halted (the candidate has no fault: a false alarm)'} at stage "
            f"{halted.index} ({halted.kind} {halted.value}) by {', '.join(failing)} after "
            f"{_duration(duration)}; {len(touched)} of {len(devices)} devices were sent {candidate}"
        )
    else:
        verdict = "not_caught" if faulty else "completed"
        summary = (
            f"{'not caught: ' if faulty else ''}completed in {_duration(duration)}; "
            f"{len(on_candidate)} of {len(devices)} devices run {candidate}"
            + (f", {len(failed)} failed to install it" if failed else "")
        )
    return WhatIf(
        verdict=verdict,
        summary=summary,
        candidate=candidate,
        faulty=faulty,
        halted_at_stage=halted.index if halted else None,
        failed_gates=failing,
        devices_in_target=len(devices),
        devices_touched=len(touched),
        devices_failed=len(failed),
        devices_on_candidate=len(on_candidate),
        duration_s=duration,
        stages=reports,
        settings=settings,
    )


def _duration(seconds: float) -> str:
    minutes = round(seconds / 60)
    return f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{minutes} min"


def _effect(scenario: Scenario, version: str, hardware: str, extra: Sequence[Fault]) -> Effect:
    return behaviour.effect(scenario, version, hardware, extra)


def _target(specs: list[DeviceSpec], target: Any, model_name: str) -> list[DeviceSpec]:
    if target is None:
        return specs
    parsed = plans.parse_target(target)
    unsupported = sorted(set(parsed) - {"sites", "hardware_profiles", "running_model"})
    if unsupported:
        message = f"A what-if targets sites, hardware_profiles or running_model, not {', '.join(unsupported)}."
        raise ServiceError("invalid_target", message, 400, fields={f"target.{unsupported[0]}": [message]})
    # Every simulated device runs the scenario's model: running_model keeps all of them or none.
    runs = parsed.get("running_model", model_name) == model_name
    chosen = [
        s
        for s in specs
        if runs
        and ("sites" not in parsed or s.site in parsed["sites"])
        and ("hardware_profiles" not in parsed or s.hardware in parsed["hardware_profiles"])
    ]
    if not chosen:
        message = "No simulated device matches the target."
        raise ServiceError("empty_target", message, 400, fields={"target": [message]})
    return chosen


class _Run:
    """The simulated clock, links and telemetry of one what-if run."""

    def __init__(
        self,
        scenario: Scenario,
        settings: dict[str, Any],
        candidate: str,
        faults: list[Fault],
        start_s: float,
        tick: float,
        chunk: int,
    ) -> None:
        self.scenario = scenario
        self.settings = settings
        self.candidate = candidate
        self.faults = faults
        self.start_s = start_s
        self.tick = tick
        self.chunk = chunk
        self.site_ids = {slug: i for i, slug in enumerate(scenario.site_slugs)}
        self.budgets = behaviour.site_budgets(scenario)
        self.dies = behaviour.dead_at(scenario, behaviour.fleet(scenario))
        self.window = scenario.window_s
        # Downloads started on each site's link, as (device, start): the link's sharing depends on all of them.
        self.downloads: dict[str, list[tuple[_Device, float]]] = {}

    def at(self, t: float) -> datetime:
        return self.scenario.start + timedelta(seconds=t)

    def link_up(self, spec: DeviceSpec, t: float) -> bool:
        return t < self.dies.get(spec.index, math.inf) and not behaviour.offline(self.scenario, spec.site, t)

    def next_up(self, spec: DeviceSpec, t: float, limit: float) -> float | None:
        """The first moment from ``t`` (to ``limit``) the device's link is up, to the window's resolution."""
        step = max(1.0, min(self.tick, 60.0))
        while t <= limit:
            if self.link_up(spec, t):
                return t
            t += step
        return None

    # --- one stage -------------------------------------------------------------------

    def stage(
        self, stage: plans.Stage, members: list[_Device], later: list[_Device], report: StageReport, t: float
    ) -> tuple[float, list[str]]:
        report.started_at_s = t - self.start_s
        if stage.shadow:
            t, failing = self._shadow(members, report, t)
            if failing:
                return t, failing
        started = t
        t = self._install(members, report, t)
        report.all_active_at_s = t - self.start_s
        names = [d.device_id for d in members]
        failed = [d.device_id for d in members if d.state == "failed"]
        silent = [d.device_id for d in members if d.state == "silent"]
        activation = gates.Outcome(
            "activation",
            float(len(members) - len(silent)),
            float(len(members)),
            gates.FAIL if silent else gates.PASS,
            {"silent": silent[:50], "timeout_s": self.settings["activation_timeout_s"]},
        )
        installs = gates.failed_installs(names, failed, float(self.settings["max_failed_installs_pct"]))
        report.gates += [_outcome_json(o, t - self.start_s) for o in (activation, installs)]
        if gates.FAIL in (activation.verdict, installs.verdict):
            report.verdict = gates.FAIL
            report.judged_at_s = t - self.start_s
            return t, ["activation" if silent else "failed_installs"]
        since = t
        soak = float(self.settings["soak_s"])
        judge_at = since + soak
        while True:
            t = self._next_tick(judge_at, since)
            outcomes = self._judge(members, later, started, since, t)
            report.gates += [_outcome_json(o, t - self.start_s) for o in outcomes]
            can_extend = report.soak_extensions < int(self.settings["max_soak_extensions"])
            verdict = gates.verdict(outcomes, final=not can_extend)
            if verdict == gates.MARGINAL and can_extend:
                report.soak_extensions += 1
                judge_at = t + soak
                continue
            report.judged_at_s = t - self.start_s
            report.verdict = verdict
            if verdict != gates.PASS:
                return t, [o.gate for o in outcomes if o.verdict != gates.PASS and not o.abstains]
            return t, []

    def _next_tick(self, at: float, origin: float) -> float:
        return origin + math.ceil((at - origin) / self.tick - 1e-9) * self.tick

    def _shadow(self, members: list[_Device], report: StageReport, t: float) -> tuple[float, list[str]]:
        """Run the candidate in shadow for ``shadow_s`` (extended while too few frames), then judge its agreement."""
        size = self.scenario.model.bundle_bytes
        ready: dict[str, float] = {}
        for site, group in _by_site(members).items():
            ups = [self.next_up(d.spec, t, t + 7 * 86400) for d in group]
            starts = [u for u in ups if u is not None]
            ends = iter(behaviour.shared_link_finish(starts, size, behaviour.uplink_at(self.scenario, site, t)))
            for device, up in zip(group, ups, strict=True):
                if up is not None:
                    ready[device.device_id] = next(ends) + size / VERIFY_BYTES_PER_S + VALIDATE_S
        until = t + float(self.settings["shadow_s"])
        extensions = 0
        while True:
            judge_at = self._next_tick(until, t)
            total = Summary()
            for device in members:
                begin = ready.get(device.device_id)
                if begin is None:
                    continue
                seconds = sum(e - st for _, st, e in self._windows(begin, judge_at) if self.link_up(device.spec, e))
                if seconds <= 0:
                    continue
                figures = behaviour.measure(
                    self.scenario,
                    device.spec,
                    _STRETCH - 1 - int(begin // self.window),
                    self.scenario.model.version,
                    shadow_version=self.candidate,
                    extra_faults=self.faults,
                    window_s=seconds,
                )
                total.add_totals(_Row(figures))
            outcomes = gates.shadow_agreement(total, self.settings)
            report.gates += [_outcome_json(o, judge_at - self.start_s) for o in outcomes]
            verdicts = {o.verdict for o in outcomes}
            if gates.FAIL not in verdicts and gates.PENDING in verdicts:
                if extensions < int(self.settings["max_soak_extensions"]):
                    extensions += 1
                    until = judge_at + float(self.settings["shadow_s"])
                    continue
            report.soak_extensions = extensions
            if verdicts != {gates.PASS}:
                report.verdict, report.judged_at_s = gates.FAIL, judge_at - self.start_s
                return judge_at, [o.gate for o in outcomes if o.verdict != gates.PASS]
            return judge_at + self.tick, []

    def _install(self, members: list[_Device], report: StageReport, t: float) -> float:
        """Send the version tick by tick (cap, chunk) until every device is active, failed or silent."""
        cap = int(self.settings["max_concurrent_downloads_per_site"])
        timeout = float(self.settings["activation_timeout_s"])
        size = self.scenario.model.bundle_bytes
        while True:
            # Devices that finished by now: active or failed; past the timeout: silent.
            for device in members:
                if device.state != "assigned":
                    continue
                if device.finished_at is not None and device.finished_at <= t:
                    fails = _effect(self.scenario, self.candidate, device.spec.hardware, self.faults).fails_validation
                    device.state = "failed" if fails else "active"
                elif device.sent_at is not None and t >= device.sent_at + timeout:
                    device.state = "silent"
            in_flight = Counter(d.spec.site for d in members if d.state == "assigned")
            sent_now = 0
            touched: set[str] = set()
            for device in members:
                if device.state != "pending" or sent_now >= self.chunk:
                    continue
                if cap and in_flight[device.spec.site] >= cap:
                    continue
                in_flight[device.spec.site] += 1
                sent_now += 1
                device.state, device.sent_at = "assigned", t
                report.sent += 1
                device.link_at = self.next_up(device.spec, t, t + timeout)
                if device.link_at is not None:
                    self.downloads.setdefault(device.spec.site, []).append((device, device.link_at))
                    touched.add(device.spec.site)
            if touched:
                self._finish_times(size, touched)
            if all(d.state in ("active", "failed", "silent") for d in members):
                break
            # A full chunk leaves more to send at the next tick; otherwise skip to when something can change.
            t = t + self.tick if sent_now >= self.chunk else self._next_change(members, t)
        report.active = sum(d.state == "active" for d in members)
        report.failed = sum(d.state == "failed" for d in members)
        report.silent = sum(d.state == "silent" for d in members)
        return t

    def _next_change(self, members: list[_Device], t: float) -> float:
        """The next tick at which a device of the stage can change (ends its install, times out, may be sent)."""
        timeout = float(self.settings["activation_timeout_s"])
        moments = []
        for device in members:
            if device.state == "assigned" and device.sent_at is not None:
                moments.append(min(device.finished_at or math.inf, device.sent_at + timeout))
        waiting = any(d.state == "pending" for d in members)
        if waiting and not moments:
            return t + self.tick
        soonest = min(moments, default=t + self.tick)
        return max(t + self.tick, self._next_tick(soonest, t))

    def _finish_times(self, size: int, sites: set[str]) -> None:
        for site, downloads in self.downloads.items():
            if site not in sites:
                continue
            starts = [start for _, start in downloads]
            kbps = behaviour.uplink_at(self.scenario, site, min(starts))
            for (device, _), end in zip(downloads, behaviour.shared_link_finish(starts, size, kbps), strict=True):
                device.finished_at = end + size / VERIFY_BYTES_PER_S + VALIDATE_S

    # --- judging a soak -------------------------------------------------------------

    def _windows(self, since: float, until: float) -> list[tuple[int, float, float]]:
        """The windows (number, start, end) that end within ``[since, until)`` on the scenario's clock."""
        first = math.ceil(since / self.window)
        last = math.floor((until - 1e-9) / self.window)
        return [(_EPOCH + n, (n - 1) * self.window, n * self.window) for n in range(first, last + 1)]

    def _judge(
        self, members: list[_Device], later: list[_Device], started: float, since: float, now: float
    ) -> list[gates.Outcome]:
        active = [d for d in members if d.state == "active"]
        # As compare_to_baseline: the candidate from the minute the stage went active, the old version before
        # the stage first sent it, over a stretch as long as the soak (at least an hour, at most a day).
        after_start = math.floor(since / 60.0) * 60.0
        span = since - _seconds(baseline_window_start(self.at(since), self.at(now)), self.scenario.start)
        before_start = started - span
        current, baseline = Summary(), Summary()
        silent: list[str] = []
        samples: dict[str, list[float]] = {m: [] for m in METRICS}
        sampled = {d.device_id for d in active[:MAX_SAMPLED_DEVICES]}
        for device in active:
            if not self.link_up(device.spec, now):
                silent.append(device.device_id)  # its windows wait in its outbox: not here by the judgement
            for side, (version, begin, end) in enumerate(
                ((self.candidate, max(after_start, device.finished_at or since), now),
                 (self.scenario.model.version, before_start, started))
            ):  # fmt: skip
                total = current if side == 0 else baseline
                if device.device_id in sampled and side == 0:
                    for minute in self._minutes(device, version, begin, end):
                        total.merge(minute)
                        _add_samples(samples, minute)
                else:
                    figures = self._stretch(device, version, begin, end, side)
                    if figures is not None:
                        total.add_totals(_Row(figures))
        data = gates.StageData(
            devices=[d.device_id for d in members],
            active=[d.device_id for d in active],
            comparison=_comparison(self.at(since), self.at(before_start), len(active), baseline, current, silent),
            settings=self.settings,
            since=self.at(since),
            now=self.at(now),
            active_by_site={s: [d.device_id for d in g] for s, g in _by_site(active).items()},
            budgets={s: b for s, b in self.budgets.items() if any(d.spec.site == s for d in active)},
            model=(self.scenario.model.name, self.candidate),
            control_candidates=[d.device_id for d in later],
        )
        outcomes: list[gates.Outcome | None] = [
            gates.silent_devices(data),
            *(gate(data) for gate in gates.SOAK_GATES if gate.__name__ in _FIGURE_GATES),
            self._site_latency_budget(active, after_start, now),
            gates.class_mix_shift(data),
            self._canary_analysis(active, later, samples, after_start, now, started),
        ]
        return [o for o in outcomes if o is not None]

    def _stretch(self, device: _Device, version: str, begin: float, end: float, side: int) -> Figures | None:
        """All of a device's windows from ``begin`` to ``end`` at once (one draw), its link's downtime left out."""
        seconds = sum(e - s for _, s, e in self._windows(begin, end) if self.link_up(device.spec, e))
        if seconds <= 0:
            return None
        number = _STRETCH + 2 * int(begin // self.window) + side
        return behaviour.measure(
            self.scenario, device.spec, number, version, extra_faults=self.faults, window_s=seconds
        )

    def _minutes(self, device: _Device, version: str, begin: float, end: float) -> list[Summary]:
        out = []
        for number, start, stop in self._windows(begin, end)[-MAX_SAMPLED_WINDOWS:]:
            if not self.link_up(device.spec, stop):
                continue
            figures = behaviour.measure(
                self.scenario, device.spec, number, version, extra_faults=self.faults, window_s=stop - start
            )
            minute = Summary()
            minute.add_totals(_Row(figures))
            out.append(minute)
        return out

    def _site_latency_budget(self, active: list[_Device], since: float, now: float) -> gates.Outcome | None:
        """``gates.site_latency_budget`` on the simulated windows: each site's p95 against 80 % of its budget."""
        sites: dict[str, dict[str, Any]] = {}
        worst: tuple[float, float, float] | None = None
        for slug, group in sorted(_by_site(active).items()):
            budget = self.budgets.get(slug)
            if not budget:
                continue
            total = Summary()
            for device in group:
                figures = self._stretch(device, self.candidate, since, now, 0)
                if figures is not None:
                    total.add_totals(_Row(figures))
            p95 = total.percentile(0.95)
            allowed = budget * gates.BUDGET_SHARE
            sites[slug] = {"p95_ms": p95, "budget_ms": budget, "allowed_ms": allowed}
            if p95 is not None and (worst is None or p95 / allowed > worst[0]):
                worst = (p95 / allowed, p95, allowed)
        if not sites:
            return None
        if worst is None:
            return gates.Outcome("site_latency_budget", None, None, gates.PENDING, {"sites": sites})
        _, p95, allowed = worst
        band = float(self.settings["marginal_band"])
        return gates.Outcome("site_latency_budget", p95, allowed, gates.judge(p95, allowed, band), {"sites": sites})

    def _canary_analysis(
        self,
        active: list[_Device],
        later: list[_Device],
        canary: dict[str, list[float]],
        since: float,
        now: float,
        started: float,
    ) -> gates.Outcome | None:
        """``gates.canary_analysis`` with its samples from the simulated minutes (matched control, or own baseline)."""
        if not active:
            return None
        control_devices = _matched_control(active, later, gates.MAX_CONTROL)
        control: dict[str, list[float]] = {m: [] for m in METRICS}
        if control_devices:
            kind = "matched"
            for device in control_devices:
                for minute in self._minutes(device, self.scenario.model.version, since, now):
                    _add_samples(control, minute)
        else:
            kind = "own_baseline"
            begin = _seconds(baseline_window_start(self.at(started), self.at(now)), self.scenario.start)
            for device in active[:MAX_SAMPLED_DEVICES]:
                for minute in self._minutes(device, self.scenario.model.version, begin, started):
                    _add_samples(control, minute)
        judged = analysis.judge(canary, control)
        verdict = {"pass": gates.PASS, "marginal": gates.MARGINAL, "fail": gates.FAIL}.get(
            judged.verdict, gates.PENDING
        )
        details = {
            "analysis": judged.verdict,
            "detail": judged.detail,
            "control": kind,
            "control_devices": len(control_devices),
        }
        return gates.Outcome(
            "canary_analysis", judged.score, analysis.PASS_SCORE, verdict, details, abstains=verdict == gates.PENDING
        )


# The gates of ``gates.SOAK_GATES`` that read only the comparison: they run here as they are.
_FIGURE_GATES = {"error_rate_rise", "latency_p95_ms_regression", "mean_confidence_drop", "escalation_rate_rise"}


def _by_site(devices: Sequence[_Device]) -> dict[str, list[_Device]]:
    out: dict[str, list[_Device]] = {}
    for device in devices:
        out.setdefault(device.spec.site, []).append(device)
    return out


def _matched_control(active: list[_Device], later: list[_Device], limit: int) -> list[_Device]:
    """``telemetry.baseline.matched_control`` in memory: same hardware profile, the canary's sites first.

    The real one takes them in device id order; enrolled ids are random, so here a hash of the name stands in.
    """
    profiles = {d.spec.hardware for d in active}
    sites = {d.spec.site for d in active}
    ids = {d.device_id for d in active}
    matching = [d for d in later if d.spec.hardware in profiles and d.device_id not in ids]
    candidates = sorted(matching, key=lambda d: hashlib.sha256(d.device_id.encode()).hexdigest())
    same = [d for d in candidates if d.spec.site in sites]
    return (same + [d for d in candidates if d.spec.site not in sites])[:limit]


def _add_samples(samples: dict[str, list[float]], minute: Summary) -> None:
    figures = minute.figures()
    for metric in METRICS:
        value = figures[metric]
        if value is not None:
            samples[metric].append(float(value))


def _seconds(moment: datetime, origin: datetime) -> float:
    return (moment - origin).total_seconds()


def _comparison(
    since: datetime, baseline_start: datetime, devices: int, before: Summary, after: Summary, silent: list[str]
) -> BaselineComparison:
    old, new = before.figures(), after.figures()
    return BaselineComparison(
        since=since,
        baseline_start=baseline_start,
        devices=devices,
        frames_baseline=before.frames,
        frames_current=after.frames,
        figures={m: Figure(_num(old[m]), _num(new[m])) for m in METRICS},
        silent_devices=sorted(silent),
        baseline_summary=before,
        current_summary=after,
    )


def _num(value: float | int | None) -> float | None:
    return None if value is None else float(value)


class _Row:
    """A window's figures in the shape of a rollup row, for ``Summary.add_totals``."""

    def __init__(self, figures: Figures) -> None:
        shadow: Mapping[str, Any] = figures.shadow or {}
        self.windows, self.fallback_windows = 1, 0
        self.frames, self.dropped_frames = figures.frames, 0
        self.errors, self.escalations = figures.errors, figures.escalations
        self.latency, self.confidence, self.classes = figures.latency_ms, figures.confidence, figures.classes
        self.shadow_frames = int(shadow.get("frames", 0))
        self.shadow_errors = int(shadow.get("errors", 0))
        self.shadow_compared = int(shadow.get("compared", 0))
        self.shadow_agreed = int(shadow.get("agreed", 0))
        self.shadow_latency = shadow.get("latency_ms", {})


def _outcome_json(outcome: gates.Outcome, at_s: float) -> dict[str, Any]:
    return {
        "gate": outcome.gate,
        "verdict": outcome.verdict,
        "value": outcome.value,
        "threshold": outcome.threshold,
        "at_s": round(at_s, 1),
        "details": {k: v for k, v in outcome.details.items() if k not in ("metrics", "baseline", "current", "sites")}
        | ({"sites": outcome.details["sites"]} if "sites" in outcome.details else {}),
    }

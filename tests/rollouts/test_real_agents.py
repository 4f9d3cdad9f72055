"""Staged rollouts with real agents against the real control plane, on the project's own classifier.

Fourteen agent processes, each enrolled at a site, run the committed parts
classifier on rendered part crops and send their telemetry over the
machine's MQTT broker to a real bridge and PostgreSQL; Django's live server
serves the bundles. Six rollouts run side by side, each on its own sites, the
scheduler ticking as the beat task would:

* a good release goes canary -> 10 % -> everyone and ends active everywhere;
* four bad releases (``zoo.faults``) each stop at the canary and the canary
  goes back to the version it ran, from disk; the other device of their site
  never hears of them: one whose outputs devices cannot reproduce (fails
  validation), one too slow for its site's latency budget, one whose
  confidence collapses, and one confidently wrong (it calls every part ok:
  its answers disagree with production's);
* a release whose answers disagree with production is stopped by a shadow
  stage before it acts anywhere.

Then a site rolls back to its last good version while one of its devices
is switched off; that device converges when it comes back.

Gate settings are the defaults except for time (a 40 s soak, no extensions)
and the p95 latency regression: fourteen agents on two cores make a 1 ms
model's per-frame latency vary by multiples, so the slow release is judged by
its site's latency budget, an absolute figure.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import zoo
from agent import config as agent_config
from bridge.process import Bridge
from fleet import services as fleet
from fleet.models import Device, Site
from registry.models import ModelVersion
from rollouts import scheduler, services
from rollouts.models import GateResult, Rollout, RolloutDevice, RolloutStage
from telemetry import rollups
from telemetry.models import DeviceEvent, TelemetryRecord
from tests.agent.conftest import AgentProcess, make_agent_config, wait_until
from tests.brokers import clear_retained
from tests.registry.helpers import publish
from zoo import faults, samples

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True), pytest.mark.timeout(900)]

MODEL = "parts-classifier"
PLAN = {"stages": [{"kind": "count", "value": 1}, {"kind": "percent", "value": 10}, {"kind": "percent", "value": 100}]}
GATES = {"soak_s": 40, "max_soak_extensions": 0, "activation_timeout_s": 180, "max_p95_latency_regression": 5.0}
# Sites: the good release's two, one per bad release (a canary and a device that must never see it), the shadow's.
SITES = {
    "north": 2,
    "south": 2,
    "bad-validation": 2,
    "bad-slow": 2,
    "bad-unsure": 2,
    "bad-wrong": 2,
    "shadow": 2,
}
# Allowed p95 is 80 % of it: 20 ms. The classifier takes about 1 ms a frame, the slow release tens of ms.
SLOW_SITE_BUDGET_MS = 25


@dataclass
class Agent:
    device: Device
    config: Path
    log: Path
    data: Path
    process: AgentProcess | None = None

    def start(self) -> None:
        self.process = AgentProcess(self.config, self.log)

    def stop(self) -> None:
        if self.process is not None:
            self.process.close()
            self.process = None

    def reported(self) -> dict[str, Any]:
        self.device.refresh_from_db()
        return self.device.reported if isinstance(self.device.reported, dict) else {}

    def runs(self, version: str) -> bool:
        state = self.reported()
        return state.get("model_version") == version and state.get("phase") in ("active", "rolled_back")

    def installed(self) -> list[str]:
        models = self.data / "models"
        return sorted(p.name for p in models.iterdir()) if models.is_dir() else []


def png(image: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def releases(token_client: Callable[..., Any]) -> dict[str, ModelVersion]:
    """1.0.0 as committed; 2.0.0 and 3.0.0 good re-exports; 2.0.1-2.0.5 the bad releases of ``zoo.faults``."""
    client = token_client("publish")
    references = [png(s.image) for s in samples.reference_crops(count=4)]
    base = json.loads(zoo.metadata_path(MODEL).read_text())
    builds = {
        "1.0.0": zoo.onnx_path(MODEL).read_bytes(),
        "2.0.0": faults.good("2.0.0"),
        "2.0.1": faults.unreproducible(),
        "2.0.2": faults.slow(layers=4),
        "2.0.3": faults.unsure(),
        "2.0.4": faults.mislabelled(),
        "2.0.5": faults.blind(),
        "3.0.0": faults.good("3.0.0"),
    }
    for version, model in builds.items():
        response = publish(client, model, {**base, "version": version}, name=MODEL, images=references)
        assert response.status_code == 201, response.content
    return {v.version: v for v in ModelVersion.objects.filter(model__name=MODEL)}


@pytest.fixture
def agents(
    enroll_device: Callable[..., Any], live_server: Any, mqtt_url: str, tmp_path: Path
) -> Iterator[dict[str, list[Agent]]]:
    """Two enrolled agents per site, configured and not started; stopped and their retained state cleared after."""
    frames = samples.write_samples(tmp_path / "frames", samples.reference_crops(count=8, seed=7_001))
    assert frames
    fleet_by_site: dict[str, list[Agent]] = {}
    for slug, count in SITES.items():
        budget = SLOW_SITE_BUDGET_MS if slug == "bad-slow" else None
        site = Site.objects.create(slug=slug, name=slug.title(), latency_budget_ms=budget)
        for i in range(count):
            name = f"{slug}-{i + 1}"
            enrollment = enroll_device(site, name=name)
            home = tmp_path / name
            settings = make_agent_config(
                home / "data",
                server_url=live_server.url,
                mqtt_url=mqtt_url,
                device_id=enrollment.device.device_id,
                secret=enrollment.secret,
                trust=enrollment.trust_store,
                device={"name": name},
                mqtt={"keepalive": 10},
                agent={"heartbeat_interval_s": 1},
                capture={"source": str(tmp_path / "frames"), "loop": True, "max_fps": 8},
                vision={"window_interval_s": 2},
                escalation={"enabled": False},
            )
            agent_config.write(home / "agent.toml", settings)
            agent = Agent(enrollment.device, home / "agent.toml", home / "agent.log", home / "data")
            fleet_by_site.setdefault(slug, []).append(agent)
    everyone = [a for group in fleet_by_site.values() for a in group]
    try:
        yield fleet_by_site
    finally:
        for agent in everyone:
            agent.stop()
        for agent in everyone:
            clear_retained(mqtt_url, agent.device.device_id)


def logs(agents: list[Agent]) -> str:
    return "\n".join(f"--- {a.device.name}\n{a.log.read_text()[-3000:]}" for a in agents if a.log.exists())


def drive(bridge: Bridge, done: Callable[[], bool], *, timeout: float) -> bool:
    """Roll telemetry up and tick the scheduler, as the beat tasks do, until ``done`` (or the timeout)."""

    def step() -> bool:
        rollups.roll_up()
        scheduler.tick()
        return done()

    return wait_until(step, bridge, timeout=timeout)


def gate(rollout: Rollout, stage: int, name: str) -> GateResult:
    result = GateResult.objects.filter(stage__rollout=rollout, stage__index=stage, gate=name).order_by("-pk").first()
    assert result is not None, (
        f"no {name} result at stage {stage}: {list(GateResult.objects.values_list('gate', 'verdict'))}"
    )
    return result


def judged(rollout: Rollout) -> list[tuple[Any, ...]]:
    """Every stored gate result of the rollout, for a failure's message."""
    rows = GateResult.objects.filter(stage__rollout=rollout).order_by("pk")
    return [(r.stage.index, r.gate, r.verdict, r.value, r.threshold, r.details) for r in rows.select_related("stage")]


def never_heard_of(agent: Agent, version: ModelVersion, rollout: Rollout) -> None:
    """The device was never sent ``version``: not by the rollout, not in its events, not on its disk."""
    entry = RolloutDevice.objects.get(rollout=rollout, device=agent.device)
    assert (entry.state, entry.generation, entry.sent_at) == (RolloutDevice.PENDING, None, None)
    assert not [e for e in DeviceEvent.objects.filter(device=agent.device) if e.data.get("version") == version.version]
    assert not [name for name in agent.installed() if f"-{version.version}-" in name], agent.installed()
    assert agent.reported().get("shadow_version") != version.version
    agent.device.refresh_from_db()
    assert version.version not in json.dumps(agent.device.desired or {})


def test_a_good_release_rolls_through_its_stages_and_three_bad_ones_and_a_disagreeing_one_stop_before_spreading(
    bridge: Bridge,
    releases: dict[str, ModelVersion],
    agents: dict[str, list[Agent]],
    token_client: Callable[..., Any],
) -> None:
    everyone = [a for group in agents.values() for a in group]
    for agent in everyone:
        agent.start()
    # Every device on 1.0.0, as an operator assigned it, with telemetry from it: the baseline the gates compare with.
    for agent in everyone:
        fleet.assign_model(agent.device, releases["1.0.0"], actor=None, config={"telemetry_interval_s": 1})

    def on_v1_with_a_baseline() -> bool:
        """Every device on 1.0.0 and 250 frames of it reported: what each stage's gates compare with."""
        if not all(a.runs("1.0.0") for a in everyone):
            return False
        for agent in everyone:
            windows = TelemetryRecord.objects.filter(device=agent.device, kind="window")
            if sum(w.data.get("frames", 0) for w in windows if w.data.get("model_version") == "1.0.0") < 250:
                return False
        return True

    assert wait_until(on_v1_with_a_baseline, bridge, timeout=240), logs(everyone)

    def start(version: str, sites: list[str], **extra: Any) -> Rollout:
        return services.create(
            version=releases[version],
            target={"sites": sites},
            plan=extra.pop("plan", PLAN),
            gates={**GATES, **extra},
            actor="ci",
            reason=f"release {version}",
        )

    good = start("2.0.0", ["north", "south"])
    unreproducible = start("2.0.1", ["bad-validation"])
    slow = start("2.0.2", ["bad-slow"])
    unsure = start("2.0.3", ["bad-unsure"])
    wrong = start("2.0.5", ["bad-wrong"])
    shadowed = start(
        "2.0.4",
        ["shadow"],
        plan={"stages": [{"kind": "count", "value": 1, "shadow": True}, {"kind": "percent", "value": 100}]},
        shadow_s=20,
        min_shadow_frames=40,
        max_soak_extensions=3,
    )
    rollouts = [good, unreproducible, slow, unsure, wrong, shadowed]

    def settled() -> bool:
        return all(
            r.state in (*Rollout.FINAL, Rollout.HALTED) for r in Rollout.objects.filter(pk__in=[x.pk for x in rollouts])
        )

    assert drive(bridge, settled, timeout=600), (
        [(r.version.version, r.state, r.current_stage, r.halt_reason) for r in Rollout.objects.all()],
        logs(everyone),
    )
    for rollout in rollouts:
        rollout.refresh_from_db()

    # The good release: every stage passed (1, 1 and 2 devices), every device active on it.
    assert good.state == Rollout.COMPLETED, (good.halt_reason, judged(good))
    stages = list(good.stages.order_by("index"))
    assert [s.state for s in stages] == [RolloutStage.PASSED] * 3
    assert [good.devices.filter(stage_index=s.index).count() for s in stages] == [1, 1, 2]
    for stage in stages:
        verdicts = {r.gate: r.verdict for r in GateResult.objects.filter(stage=stage)}
        assert verdicts["activation"] == verdicts["mean_confidence_drop"] == verdicts["error_rate_rise"] == "pass", (
            verdicts
        )
    good_agents = agents["north"] + agents["south"]
    assert wait_until(lambda: all(a.runs("2.0.0") for a in good_agents), bridge, timeout=60), logs(good_agents)

    # Each bad release: halted at the canary, the canary back on 1.0.0, the other device never sent it.
    for rollout, site, failing in (
        (unreproducible, "bad-validation", "failed_installs"),
        (slow, "bad-slow", "site_latency_budget"),
        (unsure, "bad-unsure", "mean_confidence_drop"),
        (wrong, "bad-wrong", "class_mix_shift"),
    ):
        assert rollout.state == Rollout.REVERTED, (site, rollout.state, rollout.halt_reason, judged(rollout))
        assert rollout.current_stage == 0 and failing in rollout.halt_reason, (rollout.halt_reason, judged(rollout))
        result = gate(rollout, 0, failing)
        assert result.verdict == "fail" and result.value is not None and result.threshold is not None
        assert result.value > result.threshold, (failing, result.value, result.threshold)
        canary_entry = RolloutDevice.objects.get(rollout=rollout, stage_index=0)
        canary = next(a for a in agents[site] if a.device.pk == canary_entry.device_id)
        other = next(a for a in agents[site] if a is not canary)
        assert canary_entry.state == RolloutDevice.REVERTED
        assert wait_until(lambda c=canary: c.runs("1.0.0"), bridge, timeout=60), logs([canary])
        never_heard_of(other, rollout.version, rollout)
    # Too slow: the measured p95 is the slow release's, far over the 20 ms the site allows.
    assert gate(slow, 0, "site_latency_budget").threshold == pytest.approx(SLOW_SITE_BUDGET_MS * 0.8)
    # The slow and unsure canaries had installed their release, so they went back to 1.0.0 from disk.
    for rollout in (slow, unsure, wrong):
        canary_device = RolloutDevice.objects.get(rollout=rollout, stage_index=0).device
        assert not DeviceEvent.objects.filter(device=canary_device, kind="validation_failed").exists()
    unreproducible_canary = RolloutDevice.objects.get(rollout=unreproducible, stage_index=0).device
    assert DeviceEvent.objects.filter(device=unreproducible_canary, kind="validation_failed").exists()

    # The disagreeing release: the shadow stage judged it and halted; nothing installed it anywhere.
    assert shadowed.state == Rollout.HALTED, (shadowed.state, shadowed.halt_reason)
    agreement = gate(shadowed, 0, "shadow_agreement")
    assert agreement.verdict == "fail" and agreement.value is not None and agreement.value < 0.5
    assert gate(shadowed, 0, "shadow_frames").value >= 40
    for agent in agents["shadow"]:
        assert agent.runs("1.0.0")
        assert not [n for n in agent.installed() if "-2.0.4-" in n], agent.installed()
        swaps = DeviceEvent.objects.filter(device=agent.device, kind="model_swap")
        assert not [e for e in swaps if "2.0.4" in json.dumps(e.data)]
    never_heard_of(
        next(
            a
            for a in agents["shadow"]
            if not RolloutDevice.objects.filter(rollout=shadowed, device=a.device, stage_index=0).exists()
        ),
        releases["2.0.4"],
        shadowed,
    )

    # Per-site rollback while one of the site's devices is off: 3.0.0 goes out and soaks; north goes back to 2.0.0.
    third = start("3.0.0", ["north", "south"], plan={"stages": [{"kind": "percent", "value": 100}]}, soak_s=3600)
    assert drive(bridge, lambda: all(a.runs("3.0.0") for a in good_agents), timeout=120), logs(good_agents)
    north_1, north_2 = agents["north"]
    north_2.stop()
    assert wait_until(lambda: not Device.objects.get(pk=north_2.device.pk).online, bridge, timeout=60)

    client = token_client("rollout")
    preview = client.get("/api/v1/sites/north/rollback/")
    assert preview.status_code == 200, preview.content
    plan = preview.json()
    assert plan["done"] is False and plan["stops_rollouts"] == [third.pk]
    assert [(m["model"], m["version"], m["devices"], m["offline_devices"]) for m in plan["models"]] == [
        (MODEL, "2.0.0", 2, 1)
    ]
    response = client.post(
        "/api/v1/sites/north/rollback/", {"reason": "operator: scratches missed on line 1"}, format="json"
    )
    assert response.status_code == 200, response.content
    assert wait_until(lambda: north_1.runs("2.0.0"), bridge, timeout=60), logs([north_1])
    north_2.start()
    assert wait_until(lambda: north_2.runs("2.0.0"), bridge, timeout=90), logs([north_2])
    assert all(a.runs("3.0.0") for a in agents["south"])
    third.refresh_from_db()
    assert third.state == Rollout.ABORTED

"""Simulated devices in simulated time: determinism, the signed desired state, phases, uplinks and outages."""

from __future__ import annotations

import itertools
import json
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from agent.kernel import protocol, verify
from simulator import behaviour, offline
from simulator.device import Publish, SimDevice, SiteLinks, Trace
from tests.simulator.helpers import Signer, small

pytestmark = pytest.mark.unit


def messages(trace: Trace, device: str, suffix: str) -> list[dict[str, Any]]:
    return [json.loads(p) for s, p in trace.by_device[device] if s == suffix]


def assign_all(signer: Signer, scenario: Any, at_s: float, version: str = "2.0.0") -> list[offline.Delivery]:
    at = scenario.start + timedelta(seconds=at_s)
    return [
        offline.Delivery(at_s, spec.index, "desired", signer.desired(offline.device_id_for(spec), 1, version, at=at))
        for spec in behaviour.fleet(scenario)
    ]


def test_the_same_seed_gives_the_same_messages_in_the_same_order_per_device() -> None:
    signer = Signer()
    scenario = small()
    deliveries = assign_all(signer, scenario, 300)
    _, first = offline.simulate(scenario, until_s=900, keyring=signer.keyring, deliveries=deliveries)
    _, again = offline.simulate(scenario, until_s=900, keyring=signer.keyring, deliveries=deliveries)
    assert first.by_device == again.by_device
    assert sum(len(m) for m in first.by_device.values()) > 200
    _, other = offline.simulate(small(seed=12), until_s=900, keyring=signer.keyring, deliveries=deliveries)
    device = next(iter(first.by_device))
    assert messages(first, device, "telemetry") != messages(other, device, "telemetry")


def test_a_device_says_the_same_whatever_runs_beside_it() -> None:
    alone = small(sites=[{"name": "plant", "count": 2, "devices": 6, "hardware": {"orin": 2, "rpi5": 1}}])
    _, crowd = offline.simulate(small(), until_s=600)
    _, few = offline.simulate(alone, until_s=600)
    assert crowd.by_device["sim-plant-002-0003"] == few.by_device["sim-plant-002-0003"]


def test_windows_follow_the_hardware_profile() -> None:
    _, trace = offline.simulate(small(), until_s=1200)
    p50: dict[str, list[float]] = {"orin": [], "rpi5": []}
    for spec in behaviour.fleet(small()):
        for batch in messages(trace, offline.device_id_for(spec), "telemetry"):
            for record in batch["records"]:
                if record["kind"] == "window":
                    window = protocol.window_of(protocol.TelemetryRecord.model_validate(record))
                    if window.frames:
                        p50[spec.hardware].append(window.latency().quantile(0.5) or 0.0)
    orin, rpi = sorted(p50["orin"]), sorted(p50["rpi5"])
    assert 7 < orin[len(orin) // 2] < 11
    assert 30 < rpi[len(rpi) // 2] < 40


def test_a_signed_desired_document_is_verified_and_the_device_converges_through_every_phase() -> None:
    signer = Signer()
    scenario = small()
    devices, trace = offline.simulate(
        scenario, until_s=1200, keyring=signer.keyring, deliveries=assign_all(signer, scenario, 300)
    )
    assert all(d.model_version == "2.0.0" and d.phase == "active" for d in devices)
    reports = messages(trace, "sim-plant-001-0001", "reported")
    phases = [m["phase"] for m in reports]
    changes = [phase for i, phase in enumerate(phases) if i == 0 or phase != phases[i - 1]]
    assert changes[-4:] == ["downloading", "verifying", "validating", "active"]
    # Between changes, the same report again every report_s, as the agent does.
    stamps = [datetime.fromisoformat(m["ts"]) for m in reports if m["phase"] == "active"]
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(stamps)]
    assert gaps and max(gaps) <= scenario.report_s + scenario.heartbeat_s
    swaps = [m for m in messages(trace, "sim-plant-001-0001", "events") if m["kind"] == "model_swap"]
    assert swaps and swaps[0]["data"]["previous"] == "1.0.0"


def test_a_forged_or_foreign_document_is_refused_and_reported() -> None:
    signer, forger = Signer(), Signer()
    scenario = small()
    at = scenario.start + timedelta(seconds=60)
    specs = behaviour.fleet(scenario)
    first, second = offline.device_id_for(specs[0]), offline.device_id_for(specs[1])
    deliveries = [
        offline.Delivery(60, 0, "desired", forger.desired(first, 5, "6.6.6", at=at)),
        offline.Delivery(61, 0, "desired", signer.desired(second, 6, "6.6.6", at=at)),
    ]
    devices, trace = offline.simulate(scenario, until_s=300, keyring=signer.keyring, deliveries=deliveries)
    assert devices[0].model_version == "1.0.0" and devices[0].desired is None
    reasons = [m["data"]["reason"] for m in messages(trace, first, "events") if m["kind"] == "desired_rejected"]
    assert reasons == ["unknown_key", "wrong_device"]


def test_the_download_takes_what_the_site_uplink_allows() -> None:
    signer = Signer()
    scenario = small()
    _devices, trace = offline.simulate(
        scenario, until_s=1800, keyring=signer.keyring, deliveries=assign_all(signer, scenario, 60)
    )

    def active_after(device: str) -> float:
        reported = messages(trace, device, "reported")
        phases = [m["phase"] for m in reported]
        first = phases.index("downloading")
        start = reported[first]["ts"]
        # The first "active" after the download (later ones are the periodic reports).
        end = reported[phases.index("active", first)]["ts"]
        return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()

    # 2 MB over 64 kbit/s shared by the farm's 3 devices: 750 s; at a 20 Mbit/s plant, under 10 s.
    assert 740 < active_after("sim-farm-0001") < 770
    assert active_after("sim-plant-001-0001") < 10


def test_a_site_offline_keeps_its_telemetry_and_sends_it_after_with_its_floor() -> None:
    scenario = small(faults=[{"kind": "site_offline", "site": "farm", "at_s": 300, "for_s": 600}])
    devices, trace = offline.simulate(scenario, until_s=1200)
    farm = messages(trace, "sim-farm-0001", "telemetry")
    statuses = [m["state"] for m in messages(trace, "sim-farm-0001", "status")]
    assert statuses == ["online", "online"]
    seqs = [r["seq"] for batch in farm for r in batch["records"]]
    assert seqs == sorted(seqs) and seqs == list(range(1, len(seqs) + 1))
    backlog = max(farm, key=lambda b: len(b["records"]))
    assert len(backlog["records"]) >= 18  # ten minutes of windows and heartbeats, sent on reconnect
    assert all(d.outbox_depth == 0 for d in devices)


def test_a_dead_device_says_nothing_more() -> None:
    scenario = small(faults=[{"kind": "device_dies", "site": "farm", "devices": 1, "at_s": 200}])
    _, trace = offline.simulate(scenario, until_s=900)
    last = messages(trace, "sim-farm-0003", "telemetry")[-1]["records"][-1]["ts"]
    assert last < (scenario.start + timedelta(seconds=200)).isoformat().replace("+00:00", "Z")
    assert len(messages(trace, "sim-farm-0002", "telemetry")) > len(messages(trace, "sim-farm-0003", "telemetry"))


def test_a_shadow_candidate_reports_its_agreement_and_a_wrong_one_agrees_less() -> None:
    signer = Signer()
    faults = [{"kind": "bad_model", "version": "3.0.0", "hardware": "rpi5", "wrong_share": 0.5}]
    scenario = small(faults=faults)
    at = scenario.start + timedelta(seconds=60)
    deliveries = []
    for spec in behaviour.fleet(scenario):
        device_id = offline.device_id_for(spec)
        document = signer.desired(device_id, 1, "1.0.0", at=at)
        parsed = protocol.decode("desired", document)
        assert isinstance(parsed, protocol.Desired) and parsed.model is not None
        shadowed = parsed.model_copy(update={"shadow": parsed.model.model_copy(update={"version": "3.0.0"})})
        signed = protocol.encode(verify.signed_desired(shadowed, signer.sign))
        deliveries.append(offline.Delivery(60, spec.index, "desired", signed))
    devices, trace = offline.simulate(scenario, until_s=900, keyring=signer.keyring, deliveries=deliveries)
    agreement: dict[str, list[float]] = {"orin": [], "rpi5": []}
    for device in devices:
        assert device.shadow_version == "3.0.0"
        for batch in messages(trace, device.device_id, "telemetry"):
            for record in batch["records"]:
                shadow = record["data"].get("shadow")
                if shadow and shadow["compared"]:
                    agreement[device.spec.hardware].append(shadow["agreed"] / shadow["compared"])
    assert min(agreement["orin"]) > 0.9
    assert max(agreement["rpi5"]) < 0.7


def telemetry_seqs(out: list[Any]) -> list[int]:
    return [
        r["seq"]
        for item in out
        if isinstance(item, Publish) and item.suffix == "telemetry"
        for r in json.loads(item.payload)["records"]
    ]


def live_device(resend_after_s: float | None) -> SimDevice:
    scenario = small()
    signer = Signer()
    return SimDevice(
        scenario,
        behaviour.fleet(scenario)[0],
        device_id="sim-plant-0001",
        keyring=signer.keyring,
        origin=datetime(2026, 1, 1, tzinfo=timezone.utc),
        links=SiteLinks(scenario),
        resend_after_s=resend_after_s,
    )


@pytest.mark.parametrize("acked", [True, False])
def test_telemetry_left_unacknowledged_goes_again_after_resend_after_s_while_the_link_stays_up(acked: bool) -> None:
    # As the agent's outbox: a batch a bridge lost after the broker took it is not kept back until a reconnect.
    device = live_device(resend_after_s=30)
    sent = telemetry_seqs(device.connect(0.0))
    for t in range(1, 91):
        out = device.due(float(t))
        sent += telemetry_seqs(out)
        if acked and sent:
            device.receive(float(t), "ack", protocol.encode(protocol.Ack(seq=max(sent))))
    first = sent.index(1)
    if acked:
        assert sent == sorted(set(sent)), "nothing goes twice while acks come"
    else:
        assert sent.count(1) == 3 and first == 0, sent  # at 30 s and 60 s again, with everything after it


def test_without_resend_after_s_only_a_reconnect_sends_the_backlog_again() -> None:
    device = live_device(resend_after_s=None)
    sent = telemetry_seqs(device.connect(0.0))
    for t in range(1, 91):
        sent += telemetry_seqs(device.due(float(t)))
    assert sent == sorted(set(sent))
    assert telemetry_seqs(device.connect(91.0))[:1] == [1]

"""What each simulated device measures: the fleet's layout, its windows, heartbeats and downloads.

Every figure is a pure function of the scenario, the device's place in the
fleet and the window's number, drawn from a random stream of its own
(``numpy.random.default_rng([seed, device, window, purpose])``). So a device
says the same thing whatever order devices run in, however many run beside it,
and whether it runs live over MQTT or in simulated time for a what-if run:
that is what "deterministic under a seed" rests on.

Distributions (docs/simulator.md, "What devices measure"):

* frames per window: Poisson around ``fps x window_s``;
* latency per frame: log-normal around the profile's median (its ``spread``
  is sigma), times a device's own factor (a hot enclosure, a slower card:
  log-normal, sigma 0.05) and a bad model's ``latency_factor`` on its profile;
* top-1 confidence per frame: Beta with the profile's mean (shifted by a bad
  model's ``confidence_shift``) and concentration;
* classes: multinomial over the model's class mix; a bad model's
  ``wrong_share`` of frames goes to the mix turned around (confidently wrong);
* errors: binomial at the profile's plus the bad model's error rate;
* escalations: every frame under the model's threshold.

Pure: numpy and the device kernel's histogram edges only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from agent.kernel import histogram
from simulator.scenario import Fault, Hardware, Scenario, site_slugs

# Purposes of the random streams: each figure draws from its own, so adding one never shifts another.
_WINDOW, _HEARTBEAT, _DEVICE, _ESCALATION, _SHADOW = 0, 1, 2, 3, 4
# The share of frames a good candidate in shadow still answers differently (ties, borderline frames).
SHADOW_BASE_DISAGREEMENT = 0.01
_LOG_GROWTH = math.log(histogram.GROWTH)
# Frames drawn one by one per window at most; a longer stretch (a what-if's hour of a device at once) draws
# this many and scales the counts, so its cost does not grow with the frame rate times the length.
MAX_DRAWN = 20_000


@dataclass(frozen=True)
class DeviceSpec:
    index: int
    """Place in the fleet (site order, then device order): the key of the device's random streams."""
    name: str
    """Unique within its site: the name it enrolls with."""
    site: str
    hardware: str


@dataclass(frozen=True)
class Effect:
    """How a model version behaves on one hardware profile (the product of the ``bad_model`` faults on it)."""

    latency_factor: float = 1.0
    confidence_shift: float = 0.0
    wrong_share: float = 0.0
    error_rate: float = 0.0
    fails_validation: bool = False

    @property
    def faulty(self) -> bool:
        return self != Effect()


@dataclass(frozen=True)
class Figures:
    """One window's counts, in the wire form of ``protocol.Window`` (histograms as the kernel's buckets)."""

    frames: int
    errors: int
    escalations: int
    latency_ms: dict[str, int]
    confidence: list[int]
    classes: dict[str, int]
    shadow: dict[str, object] | None = None


def fleet(scenario: Scenario) -> list[DeviceSpec]:
    """Every device of the scenario, in a fixed order; the hardware mix of a site is laid out by its weights."""
    devices: list[DeviceSpec] = []
    for group in scenario.sites:
        profiles = [name for name, _ in group.hardware]
        weights = np.array([w for _, w in group.hardware], dtype=float)
        bounds = np.cumsum(weights / weights.sum())
        for slug in site_slugs(group):
            for n in range(group.devices):
                # The share (n + 0.5) / devices falls in one profile's slice: no randomness, exact proportions.
                which = min(int(np.searchsorted(bounds, (n + 0.5) / group.devices)), len(profiles) - 1)
                devices.append(DeviceSpec(len(devices), f"{slug}-{n + 1:04d}", slug, profiles[which]))
    return devices


def site_uplinks(scenario: Scenario) -> dict[str, float]:
    """Each site's uplink in kbit/s at the start (``uplink`` faults change it from their ``at_s``)."""
    return {slug: group.uplink_kbps for group in scenario.sites for slug in site_slugs(group)}


def site_budgets(scenario: Scenario) -> dict[str, int]:
    return {
        slug: group.latency_budget_ms
        for group in scenario.sites
        if group.latency_budget_ms
        for slug in site_slugs(group)
    }


def uplink_at(scenario: Scenario, site: str, t: float) -> float:
    kbps = site_uplinks(scenario)[site]
    for fault in scenario.faults:
        if fault.kind == "uplink" and fault.site == site and fault.active_at(t):
            kbps = fault.uplink_kbps or kbps
    return kbps


def effect(scenario: Scenario, version: str | None, hardware: str, extra: Sequence[Fault] = ()) -> Effect:
    """How ``version`` behaves on ``hardware``: the ``bad_model`` faults naming it, combined."""
    result = Effect()
    for fault in (*scenario.faults, *extra):
        if fault.kind != "bad_model" or fault.version != version:
            continue
        if fault.hardware is not None and fault.hardware != hardware:
            continue
        result = Effect(
            latency_factor=result.latency_factor * fault.latency_factor,
            confidence_shift=result.confidence_shift + fault.confidence_shift,
            wrong_share=min(1.0, result.wrong_share + fault.wrong_share),
            error_rate=min(1.0, result.error_rate + fault.error_rate),
            fails_validation=result.fails_validation or fault.fails_validation,
        )
    return result


def dead_at(scenario: Scenario, devices: Sequence[DeviceSpec]) -> dict[int, float]:
    """When each dying device dies (device index -> seconds): a site's last ``devices`` devices go first."""
    out: dict[int, float] = {}
    for fault in scenario.faults:
        if fault.kind != "device_dies":
            continue
        at_site = [d for d in devices if d.site == fault.site]
        for device in at_site[-fault.devices :]:
            out[device.index] = min(out.get(device.index, math.inf), fault.at_s)
    return out


def offline(scenario: Scenario, site: str, t: float) -> bool:
    """Whether the site's link is down at ``t`` (a ``site_offline`` fault)."""
    return any(f.kind == "site_offline" and f.site == site and f.active_at(t) for f in scenario.faults)


def _rng(scenario: Scenario, device: DeviceSpec, number: int, purpose: int) -> np.random.Generator:
    return np.random.default_rng([scenario.seed, device.index, number, purpose])


def device_factor(scenario: Scenario, device: DeviceSpec) -> float:
    """The device's own latency factor (its enclosure, its card), the same in every window."""
    return float(np.exp(_rng(scenario, device, 0, _DEVICE).normal(0.0, 0.05)))


def latency_buckets(values_ms: np.ndarray) -> dict[str, int]:
    """The kernel histogram's wire form of these latencies (``histogram.bucket_of`` on each, vectorised)."""
    safe = np.maximum(values_ms, histogram.MIN_MS)
    index = np.where(
        values_ms > histogram.MIN_MS,
        np.minimum(histogram.MAX_INDEX, (np.log(safe / histogram.MIN_MS) / _LOG_GROWTH).astype(np.int64)),
        0,
    )
    buckets, counts = np.unique(index, return_counts=True)
    return {str(int(b)): int(c) for b, c in zip(buckets, counts, strict=True)}


def confidence_bins(values: np.ndarray) -> list[int]:
    bins = np.minimum(histogram.CONFIDENCE_BINS - 1, (np.maximum(values, 0.0) * histogram.CONFIDENCE_BINS).astype(int))
    return [int(c) for c in np.bincount(bins, minlength=histogram.CONFIDENCE_BINS)]


def measure(
    scenario: Scenario,
    device: DeviceSpec,
    number: int,
    version: str | None,
    *,
    shadow_version: str | None = None,
    extra_faults: Sequence[Fault] = (),
    window_s: float | None = None,
) -> Figures:
    """Window ``number`` of ``device`` running ``version`` (and ``shadow_version`` beside it)."""
    hardware = scenario.hardware[device.hardware]
    rng = _rng(scenario, device, number, _WINDOW)
    span = window_s or scenario.window_s
    frames = int(rng.poisson(hardware.fps * span))
    running = effect(scenario, version, device.hardware, extra_faults)
    errors = int(rng.binomial(frames, min(1.0, hardware.error_rate + running.error_rate))) if frames else 0
    frames -= errors
    drawn = min(frames, MAX_DRAWN)
    scale = frames / drawn if drawn else 1.0
    latency, confidence = _draw(rng, hardware, running, drawn, device_factor(scenario, device))
    classes = _classes(rng, scenario, frames, running.wrong_share)
    escalations = round(int(np.count_nonzero(confidence < scenario.model.escalation_threshold)) * scale)
    shadow = None
    if shadow_version is not None:
        shadow = _shadow(scenario, device, number, hardware, shadow_version, frames, extra_faults)
    return Figures(
        frames=frames,
        errors=errors,
        escalations=escalations,
        latency_ms=_scaled(latency_buckets(latency), scale),
        confidence=_scaled_list(confidence_bins(confidence), scale),
        classes=classes,
        shadow=shadow,
    )


def _scaled(counts: dict[str, int], scale: float) -> dict[str, int]:
    return counts if scale == 1.0 else {k: round(v * scale) for k, v in counts.items() if round(v * scale)}


def _scaled_list(counts: list[int], scale: float) -> list[int]:
    return counts if scale == 1.0 else [round(c * scale) for c in counts]


def _draw(
    rng: np.random.Generator, hardware: Hardware, running: Effect, frames: int, factor: float
) -> tuple[np.ndarray, np.ndarray]:
    median = hardware.latency_ms.median * factor * running.latency_factor
    latency = rng.lognormal(math.log(median), hardware.latency_ms.spread, frames)
    mean = min(0.99, max(0.01, hardware.confidence_mean + running.confidence_shift))
    concentration = hardware.confidence_concentration
    confidence = rng.beta(mean * concentration, (1.0 - mean) * concentration, frames)
    return latency, confidence


def _classes(rng: np.random.Generator, scenario: Scenario, frames: int, wrong_share: float) -> dict[str, int]:
    names = [name for name, _ in scenario.model.classes]
    shares = np.array([share for _, share in scenario.model.classes], dtype=float)
    shares /= shares.sum()
    wrong = int(rng.binomial(frames, wrong_share)) if wrong_share and frames else 0
    counts = rng.multinomial(frames - wrong, shares)
    if wrong:
        # Confidently wrong: these frames follow the class mix turned around (the rare class answers most).
        counts = counts + rng.multinomial(wrong, shares[::-1])
    return {name: int(count) for name, count in zip(names, counts, strict=True) if count}


def _shadow(
    scenario: Scenario,
    device: DeviceSpec,
    number: int,
    hardware: Hardware,
    version: str,
    frames: int,
    extra_faults: Sequence[Fault],
) -> dict[str, object]:
    rng = _rng(scenario, device, number, _SHADOW)
    candidate = effect(scenario, version, device.hardware, extra_faults)
    errors = int(rng.binomial(frames, min(1.0, candidate.error_rate))) if frames else 0
    decided = frames - errors
    drawn = min(decided, MAX_DRAWN)
    scale = decided / drawn if drawn else 1.0
    latency, confidence = _draw(rng, hardware, candidate, drawn, device_factor(scenario, device))
    disagree = min(1.0, SHADOW_BASE_DISAGREEMENT + candidate.wrong_share)
    agreed = decided - (int(rng.binomial(decided, disagree)) if decided else 0)
    return {
        "model_name": scenario.model.name,
        "model_version": version,
        "frames": decided,
        "errors": errors,
        "compared": decided,
        "agreed": agreed,
        "latency_ms": _scaled(latency_buckets(latency), scale),
        "confidence": _scaled_list(confidence_bins(confidence), scale),
    }


def temperature(scenario: Scenario, device: DeviceSpec, number: int) -> float:
    hardware = scenario.hardware[device.hardware]
    rng = _rng(scenario, device, number, _HEARTBEAT)
    offset = _rng(scenario, device, 1, _DEVICE).normal(0.0, hardware.temperature_spread_c)
    return round(float(hardware.temperature_c + offset + rng.normal(0.0, 1.0)), 2)


def uploads(scenario: Scenario, device: DeviceSpec, number: int, escalations: int) -> int:
    """How many of a window's unsure frames the device uploads (metadata) to the cloud."""
    share = scenario.model.escalation_upload_share
    if not escalations or not share:
        return 0
    return int(_rng(scenario, device, number, _ESCALATION).binomial(escalations, share))


def download_s(size_bytes: int, kbps: float, sharing: int = 1) -> float:
    """Seconds to fetch ``size_bytes`` over a site link of ``kbps`` shared by ``sharing`` downloads."""
    return size_bytes * 8.0 * max(1, sharing) / (kbps * 1000.0)


def shared_link_finish(starts: Sequence[float], size_bytes: int | Sequence[int], kbps: float) -> list[float]:
    """When each download started at ``starts`` ends on one link shared fairly (processor sharing).

    Each download in flight gets an equal share of the link; a new one slows the
    others, a finished one speeds them up. ``size_bytes`` is one size for all, or
    one per download. Returned in the order of ``starts``.
    """
    capacity = kbps * 1000.0
    sizes = [size_bytes] * len(starts) if isinstance(size_bytes, int) else list(size_bytes)
    order = sorted(range(len(starts)), key=lambda i: starts[i])
    finish = [0.0] * len(starts)
    remaining: dict[int, float] = {}
    t = starts[order[0]] if order else 0.0
    cursor = 0
    while cursor < len(order) or remaining:
        next_arrival = starts[order[cursor]] if cursor < len(order) else math.inf
        if remaining:
            share = capacity / len(remaining)
            first = min(remaining, key=lambda i: (remaining[i], i))
            next_finish = t + remaining[first] / share
        else:
            share, first, next_finish = 0.0, -1, math.inf
        if next_arrival <= next_finish:
            for i in remaining:
                remaining[i] -= share * (next_arrival - t)
            t = next_arrival
            # Every download starting at this instant at once: a stage sends a site's devices together.
            while cursor < len(order) and starts[order[cursor]] == t:
                remaining[order[cursor]] = sizes[order[cursor]] * 8.0
                cursor += 1
        else:
            for i in remaining:
                remaining[i] -= share * (next_finish - t)
            t = next_finish
            done = [i for i, bits in remaining.items() if bits <= 1e-6]
            for i in done or [first]:
                finish[i] = t
                remaining.pop(i)
    return finish

"""Device health checks: which devices meet each alert condition right now.

Every check takes the evaluation context and the rule's threshold and returns
``{device pk: Finding}`` for the devices where the condition holds. The alert
engine (telemetry.alerts) adds durations, lifecycle and notification.
"""

from __future__ import annotations

import logging
import statistics
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db.models import Count, Max

from fleet.models import Device
from telemetry import drift
from telemetry.metrics import Summary
from telemetry.models import DeviceClock, HeartbeatRollup, Quarantine, Resolution, Scope, WindowRollup

PEER_WINDOW = timedelta(hours=1)
MIN_PEERS = 5
MIN_PEER_FRAMES = 100
# Iglewicz and Hoaglin: 0.6745 makes the MAD comparable to a standard deviation.
_MAD_SCALE = 0.6745
# How long a quarantined row or a clock found ahead keeps its device's alert open.
RECENT_TROUBLE = timedelta(hours=1)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Finding:
    value: float
    details: dict[str, Any] = field(default_factory=dict)


Findings = dict[int, Finding]


class Context:
    """What one evaluation reads, loaded once and shared by every check."""

    def __init__(self, now: datetime) -> None:
        self.now = now
        self.devices = list(Device.objects.filter(revoked_at__isnull=True).select_related("site"))
        self.by_key = {d.device_id: d for d in self.devices}
        self._recent: dict[tuple[str, str, str], Summary] | None = None
        self._drift: list[drift.Drift] | None = None

    def heartbeat(self, device: Device) -> dict[str, Any]:
        return device.last_heartbeat if isinstance(device.last_heartbeat, dict) else {}

    def is_offline(self, device: Device, missed: float) -> bool:
        return self.silent_heartbeats(device) > missed or not device.online

    def silent_heartbeats(self, device: Device) -> float:
        if device.last_seen is None:
            return 0.0
        return (self.now - device.last_seen).total_seconds() / settings.HEARTBEAT_INTERVAL_S

    def live(self) -> list[Device]:
        """Devices seen recently: stale heartbeats say nothing about health now."""
        cutoff = self.now - timedelta(seconds=settings.DEVICE_OFFLINE_AFTER_S)
        return [d for d in self.devices if d.online and d.last_seen and d.last_seen >= cutoff]

    def recent(self) -> dict[tuple[str, str, str], Summary]:
        """Merged windows per (device_id, model name, version) over the peer window."""
        if self._recent is None:
            self._recent = defaultdict(Summary)
            rows = WindowRollup.objects.filter(
                resolution=Resolution.MINUTE, scope=Scope.DEVICE, bucket__gte=self.now - PEER_WINDOW
            )
            for row in rows:
                try:
                    self._recent[(row.key, row.model_name, row.model_version)].add_totals(row)
                except Exception as exc:
                    # One unreadable row costs its device its peer comparison, not the fleet.
                    log.warning("health check quarantined a rollup row", extra={"row": row.pk, "error": str(exc)})
                    Quarantine.note(
                        "health", f"window_rollup:{row.pk}", type(exc).__name__, f"{row.key} {row.bucket}: {exc}"
                    )
        return self._recent

    def drift(self) -> list[drift.Drift]:
        if self._drift is None:
            self._drift = drift.device_drift(self.now)
        return self._drift


# --- presence and heartbeat checks ------------------------------------------


def offline(ctx: Context, threshold: float) -> Findings:
    """Silent for more than ``threshold`` heartbeat intervals, or said offline (last will)."""
    found = {}
    for device in ctx.devices:
        if device.last_seen is None:
            continue  # enrolled but never connected: nothing has gone away
        missed = ctx.silent_heartbeats(device)
        if ctx.is_offline(device, threshold):
            found[device.pk] = Finding(round(missed, 1), {"last_seen": device.last_seen.isoformat()})
    return found


def _heartbeat_above(key: str) -> Callable[[Context, float], Findings]:
    def check(ctx: Context, threshold: float) -> Findings:
        found = {}
        for device in ctx.live():
            value = ctx.heartbeat(device).get(key)
            if isinstance(value, (int, float)) and value >= threshold:
                found[device.pk] = Finding(float(value), {key: value})
        return found

    check.__doc__ = f"The last heartbeat's {key} is at or above the threshold."
    return check


temperature_high = _heartbeat_above("temperature_c")
disk_full = _heartbeat_above("disk_percent")
outbox_backlog = _heartbeat_above("outbox_depth")


def cpu_throttled(ctx: Context, threshold: float) -> Findings:
    """CPU clock below ``threshold`` times the highest clock the device reported in a day.

    Thermal throttling shows as a lower clock, not as a temperature: a warm
    warehouse can cost 30-40 % of the speed at temperatures under any alarm.
    """
    live = ctx.live()
    peaks: dict[Any, float | None] = dict(
        HeartbeatRollup.objects.filter(
            resolution=Resolution.HOUR, device__in=live, bucket__gte=ctx.now - timedelta(days=1)
        )
        .values("device")
        .annotate(peak=Max("cpu_freq_mhz_max"))
        .values_list("device", "peak")
    )
    found = {}
    for device in live:
        beat = ctx.heartbeat(device)
        current = beat.get("cpu_freq_mhz")
        peak = beat.get("cpu_freq_max_mhz") or peaks.get(device.pk)
        if isinstance(current, (int, float)) and isinstance(peak, (int, float)) and peak > 0:
            ratio = current / peak
            if ratio < threshold:
                found[device.pk] = Finding(round(ratio, 3), {"cpu_freq_mhz": current, "peak_mhz": peak})
    return found


def desired_expired(ctx: Context, threshold: float) -> Findings:
    """The device serves with a desired document that expired: newer ones are being withheld (a freeze).

    The control plane re-issues every document before it expires, so a device
    that says this is not receiving what is published for it.
    """
    found = {}
    for device in ctx.live():
        reported = device.reported if isinstance(device.reported, dict) else {}
        if reported.get("desired_expired") is True:
            found[device.pk] = Finding(1.0, {"generation": reported.get("generation")})
    return found


def fallback_active(ctx: Context, threshold: float) -> Findings:
    """The device runs its fallback model now: it reports so, or its newest minute of windows did.

    Only the newest minute counts: a device that ran the fallback until its
    first model arrived is not degraded for the rest of the hour.
    """
    latest: dict[str, tuple[datetime, int]] = {}
    for row in WindowRollup.objects.filter(
        resolution=Resolution.MINUTE, scope=Scope.DEVICE, bucket__gte=ctx.now - PEER_WINDOW
    ).values("key", "bucket", "fallback_windows"):
        if row["key"] not in latest or row["bucket"] > latest[row["key"]][0]:
            latest[row["key"]] = (row["bucket"], row["fallback_windows"])
    recent_fallback = {key for key, (_, fallback_windows) in latest.items() if fallback_windows}
    found = {}
    for device in ctx.live():
        reported = isinstance(device.reported, dict) and bool(device.reported.get("fallback"))
        if reported or device.device_id in recent_fallback:
            found[device.pk] = Finding(1.0, {"reported": reported})
    return found


def quarantined(ctx: Context, threshold: float) -> Findings:
    """At least ``threshold`` of the device's stored rows were quarantined within the last hour."""
    rows = (
        Quarantine.objects.filter(device__isnull=False, last_at__gte=ctx.now - RECENT_TROUBLE)
        .values("device")
        .annotate(n=Count("id"), latest=Max("last_at"))
    )
    found: Findings = {}
    for row in rows:
        if row["n"] >= threshold:
            found[int(row["device"])] = Finding(
                float(row["n"]), {"rows": row["n"], "latest": row["latest"].isoformat()}
            )
    return found


def clock_skew(ctx: Context, threshold: float) -> Findings:
    """The device's clock was found ``threshold`` seconds or more ahead within the last hour."""
    clocks = DeviceClock.objects.filter(observed_at__gte=ctx.now - RECENT_TROUBLE, offset_s__gte=threshold).values_list(
        "device", "offset_s", "device_time", "restamped"
    )
    return {
        int(device): Finding(round(offset, 1), {"device_time": at.isoformat(), "restamped": restamped})
        for device, offset, at, restamped in clocks
    }


# --- drift ------------------------------------------------------------------


def _drift_check(attribute: str) -> Callable[[Context, float], Findings]:
    def check(ctx: Context, threshold: float) -> Findings:
        found = {}
        for result in ctx.drift():
            value = getattr(result, attribute)
            device = ctx.by_key.get(result.device_id)
            if device is not None and value is not None and value >= threshold:
                found[device.pk] = Finding(
                    round(value, 4),
                    {
                        "model": f"{result.model_name}@{result.model_version}",
                        "frames": result.frames,
                        "baseline_frames": result.baseline_frames,
                        "psi": value,
                    },
                )
        return found

    return check


confidence_drift = _drift_check("confidence_psi")
class_mix_drift = _drift_check("class_psi")


# --- peer comparison --------------------------------------------------------


def robust_z(values: dict[str, float]) -> dict[str, float]:
    """Modified z-scores on median and MAD; empty when the group is too small to judge."""
    if len(values) < MIN_PEERS:
        return {}
    median = statistics.median(values.values())
    mad = statistics.median(abs(v - median) for v in values.values())
    # Identical peers give MAD 0; a floor of 1 % of the median keeps a tiny
    # difference from becoming an infinite score.
    mad = max(mad, abs(median) * 0.01, 1e-9)
    return {key: _MAD_SCALE * (v - median) / mad for key, v in values.items()}


def _peer_check(metric: Callable[[Summary], float | None], direction: int) -> Callable[[Context, float], Findings]:
    def check(ctx: Context, threshold: float) -> Findings:
        groups: dict[tuple[str, str, str], dict[str, float]] = defaultdict(dict)
        for (key, name, version), summary in ctx.recent().items():
            device = ctx.by_key.get(key)
            value = metric(summary)
            if device is None or value is None or summary.frames < MIN_PEER_FRAMES:
                continue
            groups[(device.hardware_profile, name, version)][key] = value
        found = {}
        for (profile, name, version), values in groups.items():
            median = statistics.median(values.values())
            for key, z in robust_z(values).items():
                if z * direction >= threshold:
                    found[ctx.by_key[key].pk] = Finding(
                        round(z, 2),
                        {
                            "value": values[key],
                            "peer_median": median,
                            "peers": len(values),
                            "hardware_profile": profile,
                            "model": f"{name}@{version}",
                        },
                    )
        return found

    return check


latency_outlier = _peer_check(lambda s: s.percentile(0.95), +1)
confidence_outlier = _peer_check(lambda s: s.mean_confidence, -1)
escalation_outlier = _peer_check(lambda s: s.escalation_rate, +1)

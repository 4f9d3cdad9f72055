"""How a set of devices compares with a baseline: what the rollout gates read.

``compare_to_baseline(device_ids, since)`` merges the devices' windows from
``since`` to now and from an equally long stretch before ``since`` (at most a
day, at least an hour), and returns one figure per gate metric with both
values and the change. Percentiles come from the merged histograms.

``window_samples(device_ids, since, until)`` keeps the device-minutes apart
instead: one sample per device and minute for each gate metric, which is what
a canary analysis (``rollouts.analysis``) tests a canary group against a
control group with. ``matched_control`` picks that control group from the
devices the caller says are still on the old version.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import QuerySet
from django.utils import timezone

from agent.kernel.histogram import LatencyHistogram
from fleet.models import Device
from telemetry.metrics import Summary
from telemetry.models import Quarantine, Resolution, Scope, WindowRollup
from telemetry.rollup_rows import HOUR, MINUTE, floor_to

log = logging.getLogger(__name__)

FAILED_PHASES = ("failed", "rolled_back")
# The gate metrics, in the order reports list them.
METRICS = ("latency_p95_ms", "mean_confidence", "escalation_rate", "error_rate", "dropped_rate")


@dataclass(frozen=True)
class Figure:
    baseline: float | None
    current: float | None

    @property
    def change(self) -> float | None:
        """current - baseline (absolute; rates and confidences are already fractions)."""
        if self.baseline is None or self.current is None:
            return None
        return self.current - self.baseline

    @property
    def ratio(self) -> float | None:
        """current / baseline - 1: the relative regression (e.g. +0.2 is 20 % slower)."""
        if not self.baseline or self.current is None:
            return None
        return self.current / self.baseline - 1.0


@dataclass(frozen=True)
class BaselineComparison:
    since: datetime
    baseline_start: datetime
    devices: int
    frames_baseline: int
    frames_current: int
    # latency_p95_ms, mean_confidence, escalation_rate, error_rate, dropped_rate
    figures: dict[str, Figure]
    failed_installs: list[str] = field(default_factory=list)
    silent_devices: list[str] = field(default_factory=list)
    unknown_devices: list[str] = field(default_factory=list)
    # The merged windows of each side: their confidence histograms and class mixes (the prediction gates).
    baseline_summary: Summary = field(default_factory=Summary)
    current_summary: Summary = field(default_factory=Summary)

    @property
    def p95_latency_regression(self) -> float | None:
        return self.figures["latency_p95_ms"].ratio

    @property
    def mean_confidence_drop(self) -> float | None:
        change = self.figures["mean_confidence"].change
        return None if change is None else -change

    @property
    def escalation_rate_rise(self) -> float | None:
        return self.figures["escalation_rate"].change

    @property
    def error_rate_rise(self) -> float | None:
        return self.figures["error_rate"].change


def compare_to_baseline(
    device_ids: Sequence[str],
    since: datetime,
    *,
    now: datetime | None = None,
    candidate: tuple[str, str] | None = None,
    baseline_until: datetime | None = None,
) -> BaselineComparison:
    """The devices' windows from ``since`` to ``now`` against the stretch before (``baseline_window_start``).

    ``candidate`` (model name, version): the version the devices were sent.
    Then only its windows count after ``since``, from the start of the bucket
    ``since`` falls in, and only other versions' windows before ``since``.
    Windows are kept per device, version and minute: the minute a device
    installed in holds both versions, each counted on its own side, so no
    frame of the candidate is ever part of the baseline it is judged against.

    ``baseline_until`` (at or before ``since``) ends the stretch before there
    instead: a stage judged again long after its devices changed version
    compares with the time before they did.
    """
    now = now or timezone.now()
    until = min(baseline_until or since, since)
    baseline_start = until - (since - baseline_window_start(since, now))
    span = until - baseline_start
    devices = list(Device.objects.filter(device_id__in=device_ids))
    keys = [d.device_id for d in devices]
    # Minute rows give exact edges for short spans; hour rows keep long ones cheap.
    resolution = Resolution.MINUTE if span <= timedelta(hours=6) else Resolution.HOUR
    before, after = Summary(), Summary()
    rows = WindowRollup.objects.filter(
        resolution=resolution, scope=Scope.DEVICE, key__in=keys, bucket__gte=baseline_start, bucket__lte=now
    )
    after_start = floor_to(since, MINUTE if resolution == Resolution.MINUTE else HOUR) if candidate else since
    for row in rows:
        if candidate is not None and (row.model_name, row.model_version) == candidate:
            if row.bucket >= after_start:
                after.add_totals(row)
        elif candidate is None and row.bucket >= since:
            after.add_totals(row)
        elif row.bucket < until:
            before.add_totals(row)
    silent_after = now - timedelta(seconds=settings.DEVICE_OFFLINE_AFTER_S)
    old, new = before.figures(), after.figures()
    return BaselineComparison(
        since=since,
        baseline_start=baseline_start,
        devices=len(devices),
        frames_baseline=before.frames,
        frames_current=after.frames,
        figures={m: Figure(_num(old[m]), _num(new[m])) for m in METRICS},
        failed_installs=sorted(
            d.device_id for d in devices if isinstance(d.reported, dict) and d.reported.get("phase") in FAILED_PHASES
        ),
        silent_devices=sorted(
            d.device_id for d in devices if not d.online or d.last_seen is None or d.last_seen < silent_after
        ),
        unknown_devices=sorted(set(device_ids) - set(keys)),
        baseline_summary=before,
        current_summary=after,
    )


def shadow_summary(device_ids: Sequence[str], since: datetime, until: datetime) -> Summary:
    """What the devices' shadow candidates did from ``since`` to ``until``: frames, errors, agreement, latency.

    One query over the minute rows; the figures are ``Summary.shadow_agreement``
    and ``shadow_latency`` (a candidate runs beside whichever version serves).
    """
    total = Summary()
    rows = (
        _device_minutes(device_ids, since, until)
        .filter(shadow_frames__gt=0)
        .only("shadow_frames", "shadow_errors", "shadow_compared", "shadow_agreed", "shadow_latency")
    )
    for row in rows:
        total.shadow_frames += row.shadow_frames
        total.shadow_errors += row.shadow_errors
        total.shadow_compared += row.shadow_compared
        total.shadow_agreed += row.shadow_agreed
        total.shadow_latency.merge(LatencyHistogram.from_wire(row.shadow_latency or {}))
    return total


def baseline_window_start(since: datetime, now: datetime) -> datetime:
    """Where the stretch before ``since`` that ``compare_to_baseline`` compares with begins.

    As long as ``since`` to ``now``, but at least an hour and at most a day.
    A canary analysis with no control devices left (the last stage) can take
    the same devices' samples from here to ``since`` as its control.
    """
    return since - min(max(now - since, timedelta(hours=1)), timedelta(days=1))


def window_samples(
    device_ids: Iterable[str],
    since: datetime,
    until: datetime,
    *,
    model_name: str | None = None,
    model_version: str | None = None,
) -> dict[str, list[float]]:
    """One sample per device-minute in ``[since, until)`` for each gate metric (``METRICS``).

    Read from the device-minute rollups in one query. A minute in which a
    device ran two versions (an install) is one sample of both; pass
    ``model_name`` and ``model_version`` to count only the minutes (and rows)
    of one version, e.g. the candidate on the canary. A metric a minute
    cannot give (no frames) is left out for that minute, so the lists can
    differ in length. Each list is in (device id, minute) order.
    """
    rows = _device_minutes(device_ids, since, until)
    if model_name is not None:
        rows = rows.filter(model_name=model_name)
    if model_version is not None:
        rows = rows.filter(model_version=model_version)
    minutes: dict[tuple[str, datetime], Summary] = defaultdict(Summary)
    for row in rows.order_by("key", "bucket", "pk"):
        try:
            minutes[(row.key, row.bucket)].add_totals(row)
        except Exception as exc:
            # One unreadable row costs the analysis one device-minute, not the gate.
            log.warning("canary samples quarantined a rollup row", extra={"row": row.pk, "error": str(exc)})
            Quarantine.note("canary", f"window_rollup:{row.pk}", type(exc).__name__, f"{row.key} {row.bucket}: {exc}")
    out: dict[str, list[float]] = {m: [] for m in METRICS}
    for summary in minutes.values():
        figures = summary.figures()
        for metric in METRICS:
            value = figures[metric]
            if value is not None:
                out[metric].append(float(value))
    return out


def matched_control(
    canary_device_ids: Iterable[str], candidate_device_ids: Iterable[str], *, limit: int | None = None
) -> list[str]:
    """The candidates that make a fair control group for these canary devices.

    ``candidate_device_ids`` are the devices the caller knows to be still on
    the old version (a rollout knows; telemetry does not). Kept: those with a
    hardware profile some canary device has (a faster board would hide a
    regression), those at the canary's sites first (same lighting, load and
    uplink), then the rest, each part in device id order; canary devices are
    never their own control. ``limit`` caps the count, taking the matched
    sites first. Two queries.
    """
    canary = set(canary_device_ids)
    profiles: set[str] = set()
    sites: set[int] = set()
    for profile, site_id in Device.objects.filter(device_id__in=canary).values_list("hardware_profile", "site_id"):
        profiles.add(profile)
        sites.add(site_id)
    candidates = (
        Device.objects.filter(device_id__in=set(candidate_device_ids) - canary, hardware_profile__in=profiles)
        .order_by("device_id")
        .values_list("device_id", "site_id")
    )
    same_site: list[str] = []
    elsewhere: list[str] = []
    for device_id, site_id in candidates:
        (same_site if site_id in sites else elsewhere).append(device_id)
    chosen = same_site + elsewhere
    return chosen if limit is None else chosen[:limit]


def _num(value: float | int | None) -> float | None:
    return None if value is None else float(value)


def _device_minutes(device_ids: Iterable[str], since: datetime, until: datetime) -> QuerySet[WindowRollup]:
    """The devices' minute rows from ``since`` up to ``until``."""
    return WindowRollup.objects.filter(
        resolution=Resolution.MINUTE,
        scope=Scope.DEVICE,
        key__in=list(device_ids),
        bucket__gte=since,
        bucket__lt=until,
    )

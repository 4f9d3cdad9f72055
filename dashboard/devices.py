"""One device's page: its state against what it should run, what happened to it, and its telemetry charts.

The page reads a fixed number of queries whatever the device's history holds
(the recent events, the offline episodes, the installs and the rollouts that
reached it, each cut to a few rows). Its live part (``live_state``) is also
what ``dashboard.live`` serves every few seconds, so the page and the fragment
render the same thing from the same queries.

Presence changes are not stored as events (the bridge keeps only the newest,
``status_changed_at``), so the timeline reads them from the two places that
hold them: the device's last change, and the episodes of its ``offline`` alert.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render
from django.template.defaultfilters import filesizeformat
from django.utils import timezone

from fleet.models import Device
from rollouts.models import RolloutDevice
from telemetry.models import Alert, DeviceClock, DeviceEvent, Quarantine
from telemetry.rollups import READABLE

# The chart ranges a device page offers, and the points asked of the series API
# for each: one per minute for an hour, per hour beyond (the rollups' resolutions).
RANGES: dict[str, tuple[timedelta, int]] = {
    "1h": (timedelta(hours=1), 60),
    "24h": (timedelta(hours=24), 24),
    "7d": (timedelta(days=7), 168),
}
DEFAULT_RANGE = "24h"
RECENT_EVENTS = 20
RECENT_OFFLINE = 10
RECENT_QUARANTINE = 10
MODEL_HISTORY = 20
NOTHING = "\N{EM DASH}"

# Event kinds an agent sends (agent/updater.py, agent/desired.py): a refusal is worth a red mark.
REFUSALS = frozenset({"desired_rejected", "validation_failed", "shadow_failed", "command_failed"})
SWAP = "model_swap"


@dataclass(frozen=True)
class Entry:
    """One line of the device's timeline."""

    at: datetime
    kind: str
    title: str
    detail: str = ""
    tone: str = "info"  # info | ok | bad
    source: str = "event"  # event: sent by the device | presence: seen by the control plane


@dataclass(frozen=True)
class Compared:
    """One field of the desired state beside what the device reports."""

    field: str
    desired: str
    reported: str
    differs: bool = False
    note: str = ""


@dataclass(frozen=True)
class Install:
    """One row of the model history: a version the device swapped to, or one a rollout sent it."""

    at: datetime | None
    version: str
    how: str
    outcome: str
    tone: str = "info"


def _text(value: Any) -> str:
    """A value as a person reads it: nothing is an em dash, never the word None."""
    if value is None or value == "":
        return NOTHING
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True)
    return str(value)


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _details(data: dict[str, Any]) -> str:
    return " ".join(f"{k}={_text(v)}" for k, v in data.items())


def describe(event: DeviceEvent) -> Entry:
    """An event as a sentence; kinds this page does not know show what the device sent, as it sent it."""
    data = _dict(event.data)
    kind = event.kind
    reason = " \N{EM DASH} ".join(str(data[k]) for k in ("reason", "detail") if data.get(k))
    if kind == SWAP:
        was = f" (was {data['previous']})" if data.get("previous") else ""
        title = f"Now runs {data.get('name') or 'the model'} {_text(data.get('version'))}{was}"
        phase = data.get("phase")
        tone = "bad" if phase == "rolled_back" else "ok"
        return Entry(event.at, kind, title, f"phase {phase}" if phase else "", tone)
    if kind == "desired_rejected":
        title = f"Refused desired state, generation {_text(data.get('generation'))}"
        return Entry(event.at, kind, title, reason or _details(data), "bad")
    if kind == "validation_failed":
        return Entry(event.at, kind, f"Refused update to {_text(data.get('version'))}", reason or _details(data), "bad")
    if kind == "shadow_failed":
        return Entry(event.at, kind, f"Shadow candidate {_text(data.get('version'))} failed", reason, "bad")
    if kind == "fallback_engaged":
        return Entry(event.at, kind, "Fell back to the fallback model", reason, "bad")
    if kind == "desired_expired":
        return Entry(event.at, kind, "Desired state expired (updates withheld)", _details(data), "bad")
    return Entry(event.at, kind, kind, _details(data), "bad" if kind in REFUSALS else "info")


def presence(device: Device, offline_alerts: list[Alert]) -> list[Entry]:
    """Online and offline moments: the device's last change, and its offline alerts opening and clearing."""
    found = []
    if device.status_changed_at:
        if device.online:
            found.append(Entry(device.status_changed_at, "online", "Came online", "", "ok", "presence"))
        else:
            found.append(Entry(device.status_changed_at, "offline", "Went offline", "", "bad", "presence"))
    for alert in offline_alerts:
        missed = f"{alert.value:g} heartbeat intervals without a word" if alert.value is not None else ""
        found.append(Entry(alert.since, "offline", "Silent: offline alert", missed, "bad", "presence"))
        if alert.resolved_at:
            cleared = "Heard from again: offline alert cleared"
            found.append(Entry(alert.resolved_at, "online", cleared, "", "ok", "presence"))
    return found


def compare(device: Device) -> list[Compared]:
    """The desired state's fields beside the reported ones; a field differs only where the device should follow."""
    desired, reported = _dict(device.desired), _dict(device.reported)
    model, shadow = _dict(desired.get("model")), _dict(desired.get("shadow"))
    fallback = reported.get("fallback") is True
    rows = []

    def pair(field: str, wanted: Any, got: Any, note: str = "") -> None:
        differs = wanted not in (None, "") and wanted != got
        rows.append(Compared(field, _text(wanted), _text(got), differs, note if differs else ""))

    pair("Model", model.get("name"), reported.get("model_name"), "the fallback model runs" if fallback else "")
    if not device.online:
        waiting = "sent when the device is back"
    elif reported.get("phase") == "failed":
        waiting = "the update failed"
    else:
        waiting = "not applied yet"
    pair("Version", model.get("version"), reported.get("model_version"), waiting)
    generation = reported.get("generation")
    applied = generation if isinstance(generation, int) and not isinstance(generation, bool) else None
    behind = device.desired_generation - (applied or 0)
    note = ("never reported" if applied is None else f"{behind} behind") if behind > 0 else ""
    rows.append(Compared("Generation", _text(device.desired_generation or None), _text(generation), behind > 0, note))
    if shadow or reported.get("shadow_version"):
        pair("Shadow candidate", shadow.get("version"), reported.get("shadow_version"))
    rows.append(Compared("Bundle target", _text(model.get("target")), "not reported"))
    if desired.get("rollback_to"):
        rows.append(Compared("Rollback to", _text(desired["rollback_to"]), "not reported"))
    config = _dict(desired.get("config"))
    rows.append(Compared("Runtime config", _details(config) or NOTHING, "not reported"))
    note = "the model did not load" if fallback else ""
    rows.append(Compared("Fallback", "no", _text(reported.get("fallback")), fallback, note))
    return rows


def _duration(seconds: Any) -> str:
    if not isinstance(seconds, (int, float)):
        return NOTHING
    total = int(seconds)
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    return f"{days} d {hours} h" if days else f"{hours} h {rest // 60} min"


def _number(value: Any, unit: str, digits: int = 0) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return NOTHING
    return f"{value:.{digits}f}\N{NO-BREAK SPACE}{unit}" if unit else f"{value:.{digits}f}"


def _clock(value: Any, beat: dict[str, Any]) -> str:
    peak = beat.get("cpu_freq_max_mhz")
    return _number(value, "MHz") + (f" of {_number(peak, 'MHz')}" if isinstance(peak, (int, float)) else "")


def _records(value: Any, _: Any) -> str:
    return f"{value} record{'s' if value != 1 else ''} waiting" if isinstance(value, int) else NOTHING


# The heartbeat's fields (agent.kernel.protocol.Heartbeat) in the order and units people read them.
HEARTBEAT: list[tuple[str, str, Callable[[Any, dict[str, Any]], str]]] = [
    ("cpu_percent", "CPU", lambda v, _: _number(v, "%")),
    ("memory_percent", "Memory", lambda v, _: _number(v, "%")),
    ("temperature_c", "Temperature", lambda v, _: _number(v, "°C", 1)),
    ("cpu_freq_mhz", "CPU clock", _clock),
    ("disk_percent", "Disk", lambda v, _: _number(v, "%")),
    ("disk_free_bytes", "Disk free", lambda v, _: filesizeformat(v) if isinstance(v, int) else NOTHING),
    ("outbox_depth", "Outbox", _records),
    ("uptime_s", "Uptime", lambda v, _: _duration(v)),
    ("model_version", "Model version", lambda v, _: _text(v)),
    ("agent_version", "Agent", lambda v, _: _text(v)),
]
_SHOWN = {key for key, _, _ in HEARTBEAT} | {"cpu_freq_max_mhz", "ts"}


def _taken(device: Device) -> datetime | None:
    """When the last heartbeat was taken, if it says so readably."""
    ts = _dict(device.last_heartbeat).get("ts")
    try:
        return datetime.fromisoformat(ts) if isinstance(ts, str) else None
    except ValueError:
        return None


def heartbeat(device: Device) -> list[tuple[str, str, str]]:
    """The last heartbeat as (key, label, figure with its unit), then whatever else the agent sent."""
    beat = _dict(device.last_heartbeat)
    if not beat:
        return []
    shown = [(key, label, show(beat.get(key), beat)) for key, label, show in HEARTBEAT if key in beat]
    return shown + [(key, key, _text(value)) for key, value in sorted(beat.items()) if key not in _SHOWN]


def model_history(device: Device, swaps: list[DeviceEvent], entries: list[RolloutDevice]) -> list[Install]:
    """The versions the device swapped to (its own events) and those rollouts sent it, newest first."""
    rows = []
    for event in swaps:
        data = _dict(event.data)
        phase = data.get("phase")
        rows.append(
            Install(
                event.at,
                f"{data.get('name') or ''} {_text(data.get('version'))}".strip(),
                "installed by the device" + (f", was {data['previous']}" if data.get("previous") else ""),
                "rolled back" if phase == "rolled_back" else _text(phase),
                "bad" if phase == "rolled_back" else "ok",
            )
        )
    for entry in entries:
        version = entry.rollout.version
        state = entry.state
        outcome = f"{state}: {entry.error}" if entry.error else state
        tone = "bad" if state in (RolloutDevice.FAILED, RolloutDevice.REVERTED, RolloutDevice.SILENT) else "info"
        rows.append(
            Install(
                entry.sent_at or entry.rollout.created_at,
                f"{version.model.name} {version.version}",
                f"sent by rollout #{entry.rollout_id}",
                outcome,
                "ok" if state == RolloutDevice.ACTIVE else tone,
            )
        )
    floor = datetime.min.replace(tzinfo=timezone.get_current_timezone())
    return sorted(rows, key=lambda r: r.at or floor, reverse=True)[:MODEL_HISTORY]


def live_state(device: Device) -> dict[str, Any]:
    """What the page's live part shows: state, desired against reported, heartbeat, alerts and the timeline."""
    events = DeviceEvent.objects.filter(device=device)
    # Only times Python can hold are read: a row written around the bridge
    # (year 1 at +14:00 is 1 BC in UTC) made this page answer 500. Those are
    # counted, and the rollups' quarantine names them.
    readable = events.filter(at__range=READABLE)
    offline = list(
        Alert.objects.filter(device=device, rule__kind="offline")
        .exclude(state=Alert.State.PENDING)
        .order_by("-since")[:RECENT_OFFLINE]
    )
    timeline = [describe(e) for e in readable.order_by("-at", "-pk")[:RECENT_EVENTS]] + presence(device, offline)
    compared = compare(device)
    return {
        "device": device,
        "timeline": sorted(timeline, key=lambda e: e.at, reverse=True)[:RECENT_EVENTS],
        "unreadable_events": events.exclude(at__range=READABLE).count(),
        "alerts": list(
            Alert.objects.select_related("rule").filter(
                device=device, state__in=[Alert.State.OPEN, Alert.State.ACKNOWLEDGED]
            )
        ),
        "compared": compared,
        "assigned": bool(_dict(_dict(device.desired).get("model"))),
        "converged": not any(row.differs for row in compared),
        "heartbeat": heartbeat(device),
        "heartbeat_at": _taken(device),
        "clock": DeviceClock.objects.filter(device=device).first(),
    }


def device_for(device_id: str) -> Device:
    return get_object_or_404(Device.objects.select_related("site"), device_id=device_id)


@login_required
def device_detail(request: HttpRequest, device_id: str) -> HttpResponse:
    device = device_for(device_id)
    chosen = request.GET.get("range", DEFAULT_RANGE)
    if chosen not in RANGES:
        # A hand-edited link: say what is offered rather than guess.
        return render(request, "dashboard/device.html", _context(device, DEFAULT_RANGE, error=chosen), status=400)
    return render(request, "dashboard/device.html", _context(device, chosen))


def _context(device: Device, chosen: str, error: str | None = None) -> dict[str, Any]:
    span, points = RANGES[chosen]
    # An exact span as of page load: with "until now" the span would grow by the
    # request's latency and the API would merge every two buckets into one step.
    end = timezone.now()
    swaps = DeviceEvent.objects.filter(device=device, kind=SWAP, at__range=READABLE).order_by("-at", "-pk")
    entries = (
        RolloutDevice.objects.filter(device=device)
        .select_related("rollout__version__model")
        .order_by("-rollout__created_at", "-pk")
    )
    return {
        **live_state(device),
        "ranges": list(RANGES),
        "range": chosen,
        "range_error": error,
        "series_start": (end - span).isoformat(),
        "series_end": end.isoformat(),
        "series_points": points,
        "history": model_history(device, list(swaps[:MODEL_HISTORY]), list(entries[:MODEL_HISTORY])),
        "quarantined": list(Quarantine.objects.filter(device=device)[:RECENT_QUARANTINE]),
        "reported_json": json.dumps(device.reported, indent=2, sort_keys=True),
        "desired_json": json.dumps(device.desired, indent=2, sort_keys=True),
    }

"""Dashboard pages of the fleet: the overview and one device.

Pages render what the database holds now; charts fetch their series from
/api/v1/telemetry/ in the browser with the same session, so the figures on a
page are the API's figures and nothing here recomputes them.
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render
from django.utils import timezone

from fleet.filters import DeviceFilter
from fleet.models import Device, Site
from telemetry.models import Alert, DeviceClock, Quarantine
from telemetry.rollups import READABLE

# The chart ranges a device page offers, and the points asked of the series API
# for each: one per minute for an hour, per hour beyond (the rollups' resolutions).
RANGES: dict[str, tuple[timedelta, int]] = {
    "1h": (timedelta(hours=1), 60),
    "24h": (timedelta(hours=24), 24),
    "7d": (timedelta(days=7), 168),
}
OVERVIEW_RANGE = "24h"
RECENT_EVENTS = 20
RECENT_QUARANTINE = 10


@login_required
def dashboard(request: HttpRequest) -> HttpResponse:
    devices = DeviceFilter(request.GET, queryset=Device.objects.select_related("site").filter(revoked_at__isnull=True))
    rows = list(devices.qs) if devices.is_valid() else []
    sites: dict[int, dict[str, Any]] = {site.pk: {"site": site, "devices": []} for site in Site.objects.all()}
    for device in rows:
        sites[device.site_id]["devices"].append(device)
    span, points = RANGES[OVERVIEW_RANGE]
    end = timezone.now()
    context = {
        "sites": list(sites.values()),
        "filter": devices,
        "total": len(rows),
        "online": sum(1 for d in rows if d.online),
        "open_alerts": Alert.objects.filter(state=Alert.State.OPEN).count(),
        "series_start": (end - span).isoformat(),
        "series_end": end.isoformat(),
        "series_points": points,
    }
    return render(request, "dashboard/fleet.html", context, status=200 if devices.is_valid() else 400)


@login_required
def device_detail(request: HttpRequest, device_id: str) -> HttpResponse:
    device = get_object_or_404(Device.objects.select_related("site"), device_id=device_id)
    chosen = request.GET.get("range", OVERVIEW_RANGE)
    if chosen not in RANGES:
        # A hand-edited link: say what is offered rather than guess.
        return render(
            request, "dashboard/device.html", _device_context(device, OVERVIEW_RANGE, error=chosen), status=400
        )
    return render(request, "dashboard/device.html", _device_context(device, chosen))


def _device_context(device: Device, chosen: str, error: str | None = None) -> dict[str, Any]:
    span, points = RANGES[chosen]
    # An exact span as of page load: with "until now" the span would grow by the
    # request's latency and the API would merge every two buckets into one step.
    end = timezone.now()
    live = Alert.objects.select_related("rule").filter(device=device)
    # Only times Python can hold are read: a row written around the bridge
    # (year 1 at +14:00 is 1 BC in UTC) made this page answer 500. Those are
    # counted, and the rollups' quarantine names them.
    events = device.events.all()
    readable = events.filter(at__range=READABLE)
    return {
        "device": device,
        "ranges": list(RANGES),
        "range": chosen,
        "range_error": error,
        "series_start": (end - span).isoformat(),
        "series_end": end.isoformat(),
        "series_points": points,
        "events": list(readable[:RECENT_EVENTS]),
        "unreadable_events": events.exclude(at__range=READABLE).count(),
        "clock": DeviceClock.objects.filter(device=device).first(),
        "quarantined": list(Quarantine.objects.filter(device=device)[:RECENT_QUARANTINE]),
        "alerts": list(live.filter(state__in=[Alert.State.OPEN, Alert.State.ACKNOWLEDGED])),
        "reported_json": json.dumps(device.reported, indent=2, sort_keys=True),
        "desired_json": json.dumps(device.desired, indent=2, sort_keys=True),
        "heartbeat": sorted((device.last_heartbeat if isinstance(device.last_heartbeat, dict) else {}).items()),
    }

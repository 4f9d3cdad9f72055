"""Dashboard pages of the fleet: the overview of sites, the device list and one device.

Pages render what the database holds now; charts fetch their series from
/api/v1/telemetry/ in the browser with the same session, so the figures on a
page are the API's figures and nothing here recomputes them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render
from django.utils import timezone

from dashboard.fleet_charts import fleet_charts
from dashboard.overview import overview, tiles
from dashboard.query import without
from fleet.filters import DeviceFilter
from fleet.models import Device
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
DEVICES_PER_PAGE = 100
SORT_COLUMNS = [
    ("site", "Site"),
    ("devices", "Devices"),
    ("online", "Online"),
    ("offline", "Offline"),
    ("unhealthy", "Unhealthy"),
    ("alerts", "Open alerts"),
    ("versions", "Model versions"),
]
RECENT_EVENTS = 20
RECENT_QUARANTINE = 10


@login_required
def dashboard(request: HttpRequest) -> HttpResponse:
    """Sites as a sortable, filterable, paginated table; devices are one search away."""
    found = overview(request.GET)
    valid = found.page is not None
    context = {
        **tiles(),
        "charts": fleet_charts(timezone.now()),
        "overview": found,
        "form": found.form,
        "rows": [(site, found.versions.get(site.pk, [])) for site in found.page or []],
        "query": without(request.GET, "page", "sort"),
        "page_query": without(request.GET, "page"),
        "sort_columns": SORT_COLUMNS,
        "sort": (found.form.cleaned_data.get("sort") or "site") if valid else "site",
    }
    return render(request, "dashboard/fleet.html", context, status=200 if valid else 400)


@login_required
def device_list(request: HttpRequest) -> HttpResponse:
    """Devices matching the API's device filter, a page at a time, each marked with its open alerts."""
    devices = DeviceFilter(request.GET, queryset=Device.objects.select_related("site").filter(revoked_at__isnull=True))
    valid = devices.is_valid()
    page = (
        Paginator(devices.qs.order_by("site__slug", "name", "pk"), DEVICES_PER_PAGE).get_page(request.GET.get("page"))
        if valid
        else None
    )
    context = {
        "filter": devices,
        "page": page,
        "rows": with_alert_rules(page),
        "query": without(request.GET, "page"),
    }
    return render(request, "dashboard/devices.html", context, status=200 if valid else 400)


def with_alert_rules(devices: Iterable[Device] | None) -> list[tuple[Device, list[str]]]:
    """Each device with the rules of its open alerts, in one query for all of them."""
    listed = list(devices or [])
    found: dict[int, list[str]] = {}
    rows = Alert.objects.filter(device__in=[d.pk for d in listed], state=Alert.State.OPEN)
    for device, rule in rows.values_list("device_id", "rule__kind").order_by("rule__kind"):
        found.setdefault(device, []).append(rule)
    return [(device, found.get(device.pk, [])) for device in listed]


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

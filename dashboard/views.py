"""Dashboard pages of the fleet: the overview of sites and the device list (one device: ``dashboard.devices``).

Pages render what the database holds now; charts fetch their series from
/api/v1/telemetry/ in the browser with the same session, so the figures on a
page are the API's figures and nothing here recomputes them.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils import timezone

from dashboard.fleet_charts import fleet_charts
from dashboard.overview import overview, tiles
from dashboard.query import without
from fleet.filters import DeviceFilter
from fleet.models import Device
from telemetry.metrics import Summary
from telemetry.models import Alert, Resolution, Scope, WindowRollup
from telemetry.rollup_rows import floor_to

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


@login_required
def dashboard(request: HttpRequest) -> HttpResponse:
    """Sites as a sortable, filterable, paginated table; devices are one search away."""
    context = fleet_context(request)
    return render(request, "dashboard/fleet.html", context, status=200 if context["valid"] else 400)


def fleet_context(request: HttpRequest) -> dict[str, Any]:
    """The overview's tiles and table, for the page and for its live fragment (``dashboard.live``)."""
    found = overview(request.GET)
    valid = found.page is not None
    return {
        "valid": valid,
        **tiles(),
        "charts": fleet_charts(timezone.now()),
        "overview": found,
        "form": found.form,
        "rows": [(site, found.versions.get(site.pk, [])) for site in found.page or []],
        "query": without(request.GET, "page", "sort"),
        "page_query": without(request.GET, "page"),
        "sort_columns": SORT_COLUMNS,
        "sort": (found.form.cleaned_data.get("sort") or "site") if valid else "site",
        "live_query": request.GET.urlencode(),
    }


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


def with_alert_rules(devices: Iterable[Device] | None) -> list[tuple[Device, list[str], dict[str, Any]]]:
    """Each device with the rules of its open alerts and its last hours' figures: two queries for all of them."""
    listed = list(devices or [])
    found: dict[int, list[str]] = {}
    rows = Alert.objects.filter(device__in=[d.pk for d in listed], state=Alert.State.OPEN)
    for device, rule in rows.values_list("device_id", "rule__kind").order_by("rule__kind"):
        found.setdefault(device, []).append(rule)
    figures = recent_figures(listed, timezone.now())
    return [(device, found.get(device.pk, []), figures.get(device.device_id, {})) for device in listed]


def recent_figures(devices: list[Device], now: datetime) -> dict[str, dict[str, Any]]:
    """p95 latency and escalation rate of each device over this hour and the last, from its hourly rollups."""
    since = floor_to(now, timedelta(hours=1)) - timedelta(hours=1)
    merged: dict[str, Summary] = defaultdict(Summary)
    rows = WindowRollup.objects.filter(
        resolution=Resolution.HOUR, scope=Scope.DEVICE, key__in=[d.device_id for d in devices], bucket__gte=since
    )
    for row in rows:
        merged[row.key].add_totals(row)
    found = {}
    for key, summary in merged.items():
        figures = summary.figures()
        rate = figures["escalation_rate"]
        found[key] = {
            "latency_p95_ms": figures["latency_p95_ms"],
            "escalated_pct": None if rate is None else rate * 100,
        }
    return found

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render

from fleet.filters import DeviceFilter
from fleet.models import Device, Site


@login_required
def dashboard(request: HttpRequest) -> HttpResponse:
    devices = DeviceFilter(request.GET, queryset=Device.objects.select_related("site").filter(revoked_at__isnull=True))
    rows = list(devices.qs)
    sites = {site.pk: {"site": site, "devices": []} for site in Site.objects.all()}
    for device in rows:
        sites[device.site_id]["devices"].append(device)
    context = {
        "sites": list(sites.values()),
        "filter": devices,
        "total": len(rows),
        "online": sum(1 for d in rows if d.online),
    }
    return render(request, "fleet/dashboard.html", context)


def healthz(request: HttpRequest) -> JsonResponse:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    return JsonResponse({"status": "ok"})

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from core import metrics as process_metrics
from fleet import access
from fleet.models import Site
from telemetry import exporter
from telemetry.filters import AlertFilter
from telemetry.models import Alert, AlertRule


def metrics(request: HttpRequest) -> HttpResponse:
    """Prometheus scrape target; wants a bearer token when METRICS_TOKEN is set."""
    if not process_metrics.authorized(request.headers.get("Authorization", "")):
        return HttpResponse("metrics token required\n", status=401, content_type="text/plain")
    # The fleet's state from the database, then this process's own (requests, process_*).
    body = exporter.render().encode() + process_metrics.exposition()
    return HttpResponse(body, content_type=process_metrics.CONTENT_TYPE)


ALERTS_SHOWN = 200


@login_required
def alerts(request: HttpRequest) -> HttpResponse:
    """Alerts of every state but pending, filtered as the API filters them.

    Admins and operators of an alert's device's site may acknowledge it, with a
    note: the rule of ``Alert.acknowledge``, which the API's acknowledge (what
    the button posts to) applies to anyone who sends the request anyway.
    """
    queryset = Alert.objects.select_related("rule", "device", "device__site").exclude(state=Alert.State.PENDING)
    filterset = AlertFilter(request.GET, queryset=queryset)
    valid = filterset.is_valid()
    shown = list(filterset.qs[:ALERTS_SHOWN]) if valid else []
    # One query for the user's sites, not one per alert (what fleet.access.may_act_on would cost here).
    sites = access.operated_site_ids(request.user)
    context = {
        "filter": filterset,
        "rows": [(alert, sites is None or alert.device.site_id in sites) for alert in shown],
        "limit": ALERTS_SHOWN,
        "states": [s for s in Alert.State if s != Alert.State.PENDING],
        "severities": list(AlertRule.Severity),
        "sites": list(Site.objects.values_list("slug", flat=True)),
    }
    return render(request, "telemetry/alerts.html", context, status=200 if valid else 400)

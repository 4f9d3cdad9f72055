from __future__ import annotations

import hmac

from django.conf import settings
from django.http import HttpRequest, HttpResponse

from telemetry import exporter


def metrics(request: HttpRequest) -> HttpResponse:
    """Prometheus scrape target; wants a bearer token when METRICS_TOKEN is set."""
    token = settings.METRICS_TOKEN
    if token:
        offered = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(offered.encode(), token.encode()):
            return HttpResponse("metrics token required\n", status=401, content_type="text/plain")
    return HttpResponse(exporter.render(), content_type="text/plain; version=0.0.4; charset=utf-8")

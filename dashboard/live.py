"""Fragments that the dashboard's pages poll with htmx, so they stay current without a reload.

Each fragment is the partial template its page includes, rendered from the
same context code as the page: the overview's tiles and sites table
(``views.fleet_context``), a site's device table (one page of it, as the site
page lists it), a device's state and timeline (``devices.live_state``). So a
fragment costs no more queries than its page, whatever the fleet's size, and
shows nothing the page would not.

A session that has ended answers an htmx request with ``HX-Redirect`` to the
login page (the whole page goes there) rather than a redirect that htmx would
follow and swap a login form into a table.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any
from urllib.parse import urlencode, urlsplit

from django.conf import settings
from django.contrib.auth.views import redirect_to_login
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render

from dashboard.devices import device_for, live_state
from dashboard.views import DEVICES_PER_PAGE, fleet_context, with_alert_rules
from fleet.models import Device, Site

View = Callable[..., HttpResponse]


def fragment_login_required(view: View) -> View:
    """``login_required`` that sends an htmx poll's whole page, not the fragment, to the login form."""

    @wraps(view)
    def checked(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if request.user.is_authenticated:
            return view(request, *args, **kwargs)
        if request.headers.get("HX-Request") != "true":
            return redirect_to_login(request.get_full_path())
        # Only the path and query of the page the poll came from: never another host.
        current = urlsplit(request.headers.get("HX-Current-URL", ""))
        back = current.path if current.path.startswith("/") and not current.path.startswith("//") else "/"
        if current.query:
            back = f"{back}?{current.query}"
        response = HttpResponse(status=401)
        response["HX-Redirect"] = f"{settings.LOGIN_URL}?{urlencode({'next': back})}"
        return response

    return checked


@fragment_login_required
def fleet(request: HttpRequest) -> HttpResponse:
    """The overview's tiles, and its sites table swapped in out of band."""
    context = fleet_context(request)
    if not context["valid"]:
        # A bad filter: the page already says why; a poll keeps what it shows.
        return HttpResponse(status=400)
    return render(request, "dashboard/_live_fleet.html", {**context, "fragment": True})


@fragment_login_required
def site_devices(request: HttpRequest, slug: str) -> HttpResponse:
    """One page of a site's device table, as the site page lists it."""
    site = get_object_or_404(Site, slug=slug)
    devices = Device.objects.filter(site=site, revoked_at__isnull=True).order_by("name", "pk")
    page = Paginator(devices, DEVICES_PER_PAGE).get_page(request.GET.get("page"))
    return render(request, "dashboard/_live_site_devices.html", {"page": page, "rows": with_alert_rules(page)})


@fragment_login_required
def device_state(request: HttpRequest, device_id: str) -> HttpResponse:
    """A device's state against its desired state, its heartbeat, open alerts and timeline."""
    return render(request, "dashboard/_live_device.html", live_state(device_for(device_id)))

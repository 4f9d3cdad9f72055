"""A site's page: its devices, settings and rollout history, and the one-action rollback of the site.

The rollback form previews ``rollouts.rollback.plan`` and posts to
``rollouts.rollback.roll_back``, the service behind the API's rollback, so the
page and the API cannot disagree about what a rollback does.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.template.defaultfilters import pluralize
from django.views.decorators.http import require_http_methods

from core.errors import ServiceError
from dashboard.views import DEVICES_PER_PAGE, with_alert_rules
from fleet import access
from fleet.models import Device, Site
from rollouts import rollback
from rollouts.models import Rollout

ROLLOUTS_SHOWN = 50


class RollbackForm(forms.Form):
    reason = forms.CharField(max_length=2000, widget=forms.Textarea(attrs={"rows": 2}))

    def clean_reason(self) -> str:
        reason: str = self.cleaned_data["reason"].strip()
        if not reason:
            raise forms.ValidationError("Say why the site is rolled back.")
        return reason


@login_required
@require_http_methods(["GET", "POST"])
def site_detail(request: HttpRequest, slug: str) -> HttpResponse:
    site = get_object_or_404(Site, slug=slug)
    # The same rule as the service's: admins, and operators of this site.
    may_act = access.may_act_on(request.user, [site.pk])
    form = RollbackForm(request.POST or None)
    if request.method == "POST":
        if not may_act:
            raise PermissionDenied(f"Only admins and operators of {site.slug} may roll it back.")
        if form.is_valid():
            try:
                done = rollback.roll_back(site, actor=request.user, reason=form.cleaned_data["reason"])
            except ServiceError as refused:
                messages.error(request, str(refused.detail))
            else:
                moved = sum(len(m.devices) for m in done.models)
                stopped = len(done.rollouts)
                messages.success(
                    request,
                    f"{site.name} rolled back: {moved} device{pluralize(moved)} sent their known-good version, "
                    f"{stopped} rollout{pluralize(stopped)} stopped.",
                )
            return redirect("site-page", slug=site.slug)
        return render(request, "dashboard/site.html", _context(request, site, form, may_act), status=400)
    return render(request, "dashboard/site.html", _context(request, site, form, may_act))


def _context(request: HttpRequest, site: Site, form: RollbackForm, may_act: bool) -> dict[str, Any]:
    devices = Device.objects.filter(site=site, revoked_at__isnull=True).order_by("name", "pk")
    page = Paginator(devices, DEVICES_PER_PAGE).get_page(request.GET.get("page"))
    history = (
        Rollout.objects.filter(pk__in=Rollout.objects.filter(devices__device__site=site).values("pk"))
        .select_related("version__model")
        .order_by("-created_at", "-pk")[:ROLLOUTS_SHOWN]
    )
    return {
        "site": site,
        "page": page,
        "rows": with_alert_rules(page),
        "rollouts": list(history),
        "preview": rollback.plan(site).answer(done=False),
        "form": form,
        "may_act": may_act,
    }

"""The threshold advisor's page: its curve drawn, its pick marked, and applying a threshold to a site's devices.

The curve and the pick are ``escalations.advice.advise``'s, the figures the
API's advisor answers; Apply posts to ``escalations.advice.apply``, the service
behind ``/api/v1/escalations/advisor/apply/``, after ``fleet.access.may_act_on``
has allowed the user the site (the form is hidden from everyone else, and a
forged post is 403).
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, QueryDict
from django.shortcuts import redirect, render
from django.template.defaultfilters import pluralize
from django.urls import reverse
from django.views.decorators.http import require_http_methods

from core.errors import ServiceError
from dashboard.escalations import site_choices
from escalations import advice
from escalations.models import Escalation, EscalationState
from fleet import access
from fleet.models import Site

# Targets the page starts with, in percent: a fleet that has not said what it wants gets a pick to look at.
DEFAULT_BUDGET_PCT = 10.0
DEFAULT_ACCURACY_PCT = 95.0
# Rows of the curve's table: every 0.05 of threshold (the chart has them all).
TABLE_STEP = 0.05


def answered_versions() -> list[tuple[str, str]]:
    """The (model, version) pairs with a cloud answer: the only ones the advisor can score (one query)."""
    pairs = (
        Escalation.objects.filter(cloud_label__isnull=False)
        .order_by()
        .values_list("model_name", "model_version")
        .distinct()
    )
    return [(f"{name}@{version}", f"{name} {version}") for name, version in sorted(pairs)]


class AdvisorForm(forms.Form):
    model = forms.ChoiceField(label="Model version")
    site = forms.ChoiceField(required=False, label="Site")
    budget = forms.FloatField(
        required=False, min_value=0, max_value=100, label="Upload budget (% of frames)", widget=forms.NumberInput
    )
    accuracy = forms.FloatField(
        required=False, min_value=0, max_value=100, label="Accuracy target (%)", widget=forms.NumberInput
    )

    def __init__(self, data: QueryDict, *, versions: list[tuple[str, str]]) -> None:
        if "model" not in data and versions:
            # The first visit: the first version, with the default targets.
            data = data.copy()
            data["model"] = versions[0][0]
            if "budget" not in data and "accuracy" not in data:
                data["budget"], data["accuracy"] = str(DEFAULT_BUDGET_PCT), str(DEFAULT_ACCURACY_PCT)
        super().__init__(data)
        self.fields["model"].choices = versions  # type: ignore[attr-defined]
        self.fields["site"].choices = [("", "all sites"), *site_choices()]  # type: ignore[attr-defined]
        for name in ("budget", "accuracy"):
            self.fields[name].widget.attrs.update({"step": "any", "inputmode": "decimal"})


class ApplyForm(forms.Form):
    model = forms.CharField(max_length=128, widget=forms.HiddenInput)
    site = forms.ChoiceField(label="Site")
    threshold = forms.FloatField(min_value=0, max_value=1, label="Threshold", widget=forms.NumberInput)
    reason = forms.CharField(max_length=2000, required=False, label="Reason")

    def __init__(self, *args: Any, sites: list[tuple[str, str]], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["site"].choices = sites  # type: ignore[attr-defined]
        self.fields["threshold"].widget.attrs.update({"step": "0.01", "inputmode": "decimal"})


@login_required
@require_http_methods(["GET", "POST"])
def advisor_page(request: HttpRequest) -> HttpResponse:
    if request.method == "POST":
        return _apply(request)
    versions = answered_versions()
    form = AdvisorForm(request.GET, versions=versions)
    if not versions:
        return render(request, "dashboard/escalation_advisor.html", {"form": form, "versions": versions})
    if not form.is_valid():
        context = {"form": form, "versions": versions}
        return render(request, "dashboard/escalation_advisor.html", context, status=400)
    chosen = form.cleaned_data
    name, _, version = chosen["model"].partition("@")
    site = Site.objects.filter(slug=chosen["site"]).first() if chosen["site"] else None
    budget, accuracy = chosen["budget"], chosen["accuracy"]
    try:
        advised = advice.advise(
            name,
            version,
            site=site,
            max_escalation_rate=None if budget is None else budget / 100,
            min_accuracy=None if accuracy is None else accuracy / 100,
        )
    except ServiceError as refused:
        messages.error(request, str(refused.detail))
        advised = None
    context = {
        "form": form,
        "versions": versions,
        "advice": advised,
        "model_name": name,
        "model_version": version,
        "site": site,
        "chart": _chart(advised) if advised else None,
        "table": _table(advised["points"]) if advised else [],
        "reviewed": _reviewed(name, version, site),
        "running": _running_threshold(name, version, site),
        **_apply_context(request, chosen["model"], site, advised),
    }
    return render(request, "dashboard/escalation_advisor.html", context)


def _apply_context(
    request: HttpRequest, model: str, site: Site | None, advised: dict[str, Any] | None
) -> dict[str, Any]:
    allowed = access.operated_site_ids(request.user)
    everywhere = Site.objects.order_by("name").values_list("pk", "slug", "name")
    sites = [(slug, label) for pk, slug, label in everywhere if allowed is None or pk in allowed]
    pick = (advised or {}).get("recommendation")
    initial = {
        "model": model,
        "site": site.slug if site else (sites[0][0] if sites else ""),
        "threshold": round(pick["point"]["threshold"], 4) if pick else None,
    }
    return {"apply_form": ApplyForm(initial=initial, sites=sites) if sites else None}


def _apply(request: HttpRequest) -> HttpResponse:
    back = reverse("escalation-advisor-page")
    if request.GET:
        back = f"{back}?{request.GET.urlencode()}"
    if access.operated_site_ids(request.user) == frozenset():
        raise PermissionDenied("Only admins and operators of a site may apply a threshold to it.")
    form = ApplyForm(request.POST, sites=site_choices())
    if not form.is_valid():
        problems = "; ".join(f"{field}: {' '.join(str(e) for e in errors)}" for field, errors in form.errors.items())
        messages.error(request, f"Nothing applied: {problems}")
        return redirect(back)
    site = Site.objects.get(slug=form.cleaned_data["site"])
    if not access.may_act_on(request.user, [site.pk]):
        raise PermissionDenied(f"Only admins and operators of {site.slug} may apply a threshold there.")
    name, _, version = form.cleaned_data["model"].partition("@")
    threshold = form.cleaned_data["threshold"]
    try:
        done = advice.apply(
            name, version, site=site, threshold=threshold, actor=request.user, reason=form.cleaned_data["reason"]
        )
    except ServiceError as refused:
        messages.error(request, str(refused.detail))
    else:
        messages.success(
            request,
            f"Threshold {threshold:g} sent to {done['devices']} device{pluralize(done['devices'])} "
            f"at {site.name} on {name} {version}.",
        )
    return redirect(back)


def _chart(advised: dict[str, Any]) -> dict[str, Any]:
    """What advisor.js draws: the curve as (rate, accuracy) points with their thresholds, and the pick."""

    def xy(point: dict[str, Any]) -> dict[str, float]:
        return {"x": point["escalation_rate"], "y": point["expected_accuracy"], "t": point["threshold"]}

    pick = advised["recommendation"]
    return {"points": [xy(p) for p in advised["points"]], "pick": xy(pick["point"]) if pick else None}


def _table(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The curve every ``TABLE_STEP`` of threshold: the chart's figures for those who do not read charts."""
    steps = {round(i * TABLE_STEP, 2) for i in range(round(1 / TABLE_STEP) + 1)}
    return [p for p in points if round(p["threshold"], 6) in steps]


def _reviewed(name: str, version: str, site: Site | None) -> int:
    rows = Escalation.objects.filter(model_name=name, model_version=version, state=EscalationState.REVIEWED)
    return (rows.filter(site=site) if site else rows).count()


def _running_threshold(name: str, version: str, site: Site | None) -> float | None:
    """The threshold the newest frame of this version was escalated under: what its devices run now, near enough."""
    rows = Escalation.objects.filter(model_name=name, model_version=version, reason="unsure")
    if site is not None:
        rows = rows.filter(site=site)
    return rows.order_by("-received_at", "-pk").values_list("threshold", flat=True).first()

"""The review queue: escalated frames a page at a time, one frame with both answers, and a person's decision.

A decision posts to ``escalations.review.review``, the service behind the API's
review endpoint, with the signed-in user as the actor; who may decide is
``fleet.access.may_act_on`` for the frame's site, checked here before the
service runs (the buttons are hidden from everyone else, and a forged post is
403). The queue's filters travel in the query string from the list to a frame
and on to the next one, so ``j``/``k`` and "after a review, the next frame"
walk the queue the reviewer chose.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db.models import F, Q, QuerySet
from django.http import HttpRequest, HttpResponse, QueryDict
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_http_methods

from core.errors import ServiceError
from escalations import review
from escalations.filters import EscalationFilter
from escalations.models import Escalation, EscalationState
from fleet import access
from fleet.models import Site

FRAMES_PER_PAGE = 50
# The states a person may decide on: the service refuses a frame the cloud has not answered (409).
DECIDABLE = (EscalationState.REVIEW, EscalationState.REVIEWED, EscalationState.ANSWERED)
# The queue's params (the list's page is not one: a frame's neighbours are the whole queue's).
QUEUE_PARAMS = ("site", "model", "state", "agreement")
SHORTCUT_LABELS = 9


def model_choices() -> list[tuple[str, str]]:
    """Every (model, version) with an escalated frame, as ``name@version`` choices (one query)."""
    pairs = Escalation.objects.order_by().values_list("model_name", "model_version").distinct()
    return [(f"{name}@{version}", f"{name} {version}") for name, version in sorted(pairs)]


def site_choices() -> list[tuple[str, str]]:
    return list(Site.objects.order_by("name").values_list("slug", "name"))


class QueueForm(forms.Form):
    """The queue's filters; with no ``state`` at all the queue is the frames waiting for a person."""

    site = forms.ChoiceField(required=False, label="Site")
    model = forms.ChoiceField(required=False, label="Model version")
    state = forms.ChoiceField(
        required=False,
        label="State",
        choices=[("", "any state"), *((s.value, s.value.replace("_", " ")) for s in EscalationState)],
    )
    agreement = forms.ChoiceField(
        required=False,
        label="Edge vs cloud",
        choices=[("", "either"), ("disagree", "disagree"), ("agree", "agree")],
    )

    def __init__(self, data: QueryDict, **kwargs: Any) -> None:
        if "state" not in data:
            data = data.copy()
            data["state"] = EscalationState.REVIEW
        super().__init__(data, **kwargs)
        self.fields["site"].choices = [("", "all sites"), *site_choices()]  # type: ignore[attr-defined]
        self.fields["model"].choices = [("", "all versions"), *model_choices()]  # type: ignore[attr-defined]


@dataclass
class Queue:
    form: QueueForm
    rows: QuerySet[Escalation] | None
    query: str
    """The queue's filters as a query string, for links to frames and pages."""


def queue(params: QueryDict) -> Queue:
    """The frames ``params`` select, newest first, through the API's filterset; ``rows`` is None when invalid."""
    form = QueueForm(params)
    if not form.is_valid():
        return Queue(form, None, "")
    chosen = form.cleaned_data
    wanted = QueryDict(mutable=True)
    if chosen["site"]:
        wanted["site"] = chosen["site"]
    if chosen["state"]:
        wanted["state"] = chosen["state"]
    if chosen["model"]:
        wanted["model_name"], _, wanted["model_version"] = chosen["model"].partition("@")
    found = EscalationFilter(wanted, queryset=Escalation.objects.select_related("device", "site"))
    rows = found.qs if found.is_valid() else Escalation.objects.none()
    if chosen["agreement"] == "disagree":
        rows = rows.filter(cloud_label__isnull=False).exclude(cloud_label=F("label"))
    elif chosen["agreement"] == "agree":
        rows = rows.filter(cloud_label=F("label"))
    kept = QueryDict(mutable=True)
    # The default queue (no filter named) keeps its links plain.
    if any(name in params for name in QUEUE_PARAMS):
        for name in QUEUE_PARAMS:
            kept[name] = chosen[name] or ""
    return Queue(form, rows.order_by("-received_at", "-pk"), kept.urlencode())


@login_required
def queue_page(request: HttpRequest) -> HttpResponse:
    found = queue(request.GET)
    page = None
    if found.rows is not None:
        page = Paginator(found.rows, FRAMES_PER_PAGE).get_page(request.GET.get("page"))
    context = {
        "form": found.form,
        "page": page,
        "query": found.query,
        "may_act_anywhere": access.operated_site_ids(request.user) != frozenset(),
    }
    return render(request, "dashboard/escalations.html", context, status=200 if page is not None else 400)


def _after(rows: QuerySet[Escalation], row: Escalation) -> int | None:
    """The id of the frame after ``row`` in the queue's order (newest first)."""
    older = Q(received_at__lt=row.received_at) | Q(received_at=row.received_at, pk__lt=row.pk)
    return rows.filter(older).values_list("pk", flat=True).first()


def _before(rows: QuerySet[Escalation], row: Escalation) -> int | None:
    newer = Q(received_at__gt=row.received_at) | Q(received_at=row.received_at, pk__gt=row.pk)
    return rows.filter(newer).order_by("received_at", "pk").values_list("pk", flat=True).first()


class DecisionForm(forms.Form):
    label = forms.CharField(max_length=200)
    note = forms.CharField(max_length=review.NOTE_MAX, required=False, widget=forms.Textarea(attrs={"rows": 2}))


def _frame_url(pk: int, query: str) -> str:
    url = reverse("escalation-page", args=[pk])
    return f"{url}?{query}" if query else url


@login_required
@require_http_methods(["GET", "POST"])
def frame_page(request: HttpRequest, pk: int) -> HttpResponse:
    row = get_object_or_404(Escalation.objects.select_related("device", "site", "reviewed_by"), pk=pk)
    found = queue(request.GET)
    query = found.query
    may_act = access.may_act_on(request.user, [row.site_id])
    if request.method == "POST":
        if not may_act:
            raise PermissionDenied(f"Only admins and operators of {row.site.slug} may review its frames.")
        form = DecisionForm(request.POST)
        if not form.is_valid():
            messages.error(request, "Choose a label (and keep the note under 2000 characters).")
            return redirect(_frame_url(row.pk, query))
        try:
            done = review.review(
                row, label=form.cleaned_data["label"], note=form.cleaned_data["note"], actor=request.user
            )
        except ServiceError as refused:
            messages.error(request, str(refused.detail))
            return redirect(_frame_url(row.pk, query))
        what = review.decision(done, done.review_label or "").replace("_", " ")
        messages.success(request, f"Frame {done.frame_id} labelled {done.review_label} ({what}).")
        rows = found.rows if found.rows is not None else Escalation.objects.none()
        # The next frame, else (the last one was reviewed) the queue's first left, else back to the list.
        following = _after(rows, done) or rows.exclude(pk=done.pk).values_list("pk", flat=True).first()
        if following is None:
            messages.info(request, "That was the last frame in this queue.")
            list_url = reverse("escalations")
            return redirect(f"{list_url}?{query}" if query else list_url)
        return redirect(_frame_url(following, query))
    rows = found.rows if found.rows is not None else Escalation.objects.none()
    labels = review.labels_for(row)
    context = {
        "row": row,
        "query": query,
        "may_act": may_act,
        "decidable": row.state in DECIDABLE,
        "labels": labels,
        "shortcut_labels": labels[:SHORTCUT_LABELS],
        "previous": _before(rows, row),
        "next": _after(rows, row),
        "top": _top(row.result),
        "form": DecisionForm(),
    }
    return render(request, "dashboard/escalation.html", context)


def _top(result: Any) -> list[tuple[str, float]]:
    """The edge's ranked answers as the device sent them (``top``: [[label, confidence], ...]), when well formed."""
    ranked = result.get("top") if isinstance(result, dict) else None
    out = []
    for item in ranked if isinstance(ranked, list) else []:
        if (
            isinstance(item, list)
            and len(item) == 2
            and isinstance(item[0], str)
            and isinstance(item[1], int | float)
            and not isinstance(item[1], bool)
        ):
            out.append((item[0], float(item[1])))
    return out[:5]

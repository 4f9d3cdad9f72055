"""Rollout pages: the list, one rollout (stages, gates, devices, events) with its actions, and starting one.

Actions post to the functions behind the API's actions (``rollouts.services``)
with the signed-in user as actor, so the page and the API cannot disagree about
what a pause or an abort does, and the services write the audit log. Who may act
is ``fleet.access.may_act_on`` over every site the rollout touches: the buttons
are hidden from the others and their posts refused (403). The progress part of
a rollout's page polls a fragment of itself every few seconds (htmx).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db.models import Count, OuterRef, QuerySet, Subquery
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.template.loader import render_to_string
from django.utils.safestring import mark_safe
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from core import access as roles
from core.errors import ServiceError
from core.models import AuditLog
from dashboard.query import without
from dashboard.rollout_forms import ActionForm, NewRolloutForm, RolloutFilterForm
from dashboard.rollout_gates import GateRow, gate_rows
from fleet import access
from registry.models import ModelVersion
from rollouts import services
from rollouts.models import GateResult, Rollout, RolloutDevice, RolloutStage

ROLLOUTS_PER_PAGE = 25
DEVICES_PER_PAGE = 50
EVENTS_SHOWN = 50
# The verbs of the API's actions, in the order the page offers them.
VERBS: dict[str, Callable[..., Rollout]] = {
    "approve": services.approve,
    "pause": services.pause,
    "resume": services.resume,
    "abort": services.abort,
}
DONE = {"approve": "approved", "pause": "paused", "resume": "resumed", "abort": "aborted"}
# Device states in the order a progress bar shows them, each with its style.
BAR = [
    (RolloutDevice.ACTIVE, "active"),
    (RolloutDevice.ASSIGNED, "installing"),
    (RolloutDevice.FAILED, "failed"),
    (RolloutDevice.SILENT, "silent"),
    (RolloutDevice.REVERTED, "reverted"),
]


@dataclass
class Progress:
    """Devices per state, of a rollout or one of its stages."""

    counts: dict[str, int] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return sum(self.counts.values())

    def of(self, state: str) -> int:
        return self.counts.get(state, 0)

    @property
    def sent(self) -> int:
        return self.size - self.of(RolloutDevice.PENDING)

    @property
    def installing(self) -> int:
        return self.of(RolloutDevice.ASSIGNED)

    @property
    def active(self) -> int:
        return self.of(RolloutDevice.ACTIVE)

    @property
    def failed(self) -> int:
        return self.of(RolloutDevice.FAILED) + self.of(RolloutDevice.SILENT)

    @property
    def reverted(self) -> int:
        return self.of(RolloutDevice.REVERTED)

    @property
    def segments(self) -> list[tuple[str, str, int, float]]:
        """(state, label, devices, percent of the bar) of every state present, for a stacked bar."""
        size = self.size or 1
        return [
            (state, label, self.of(state), round(100.0 * self.of(state) / size, 2))
            for state, label in BAR
            if self.of(state)
        ]


def progress_by(rows: Iterable[tuple[int, str, int]]) -> dict[int, Progress]:
    """(key, device state, count) rows, as one Progress per key."""
    out: dict[int, Progress] = {}
    for key, state, count in rows:
        out.setdefault(key, Progress()).counts[state] = count
    return out


@dataclass(frozen=True)
class StageView:
    stage: RolloutStage
    label: str
    state: str
    progress: Progress
    gates: list[GateRow]
    earlier: list[GateRow]


def words(state: str) -> str:
    return "waiting for approval" if state == RolloutStage.WAITING_APPROVAL else state.replace("_", " ")


# --- the list ----------------------------------------------------------------


def _listed(form: RolloutFilterForm) -> QuerySet[Rollout]:
    stages = RolloutStage.objects.filter(rollout=OuterRef("pk"))
    rows = Rollout.objects.select_related("version__model", "created_by").annotate(
        stage_state=Subquery(stages.filter(index=OuterRef("current_stage")).values("state")[:1]),
        stage_total=Subquery(stages.order_by().values("rollout").annotate(n=Count("pk")).values("n")[:1]),
    )
    data = form.cleaned_data
    if data.get("state"):
        rows = rows.filter(state=data["state"])
    if data.get("model"):
        rows = rows.filter(version__model__name=data["model"])
    if data.get("site"):
        rows = rows.filter(pk__in=RolloutDevice.objects.filter(device__site__slug=data["site"]).values("rollout_id"))
    return rows.order_by("-created_at", "-pk")


@login_required
@require_GET
def rollout_list(request: HttpRequest) -> HttpResponse:
    """Every rollout, newest first, filtered by state, model or a site it reaches, a page at a time."""
    form = RolloutFilterForm(request.GET)
    valid = form.is_valid()
    page = Paginator(_listed(form), ROLLOUTS_PER_PAGE).get_page(request.GET.get("page")) if valid else None
    shown = list(page or [])
    counts = (
        RolloutDevice.objects.filter(rollout__in=[r.pk for r in shown])
        .values_list("rollout_id", "state")
        .annotate(n=Count("pk"))
        .order_by()
    )
    progress = progress_by(counts) if shown else {}
    context = {
        "form": form,
        "page": page,
        "rows": [
            (rollout, progress.get(rollout.pk, Progress()), words(getattr(rollout, "stage_state", None) or ""))
            for rollout in shown
        ],
        "query": without(request.GET, "page"),
        "filtered": any(request.GET.get(name) for name in ("state", "model", "site")),
    }
    return render(request, "dashboard/rollout_list.html", context, status=200 if valid else 400)


# --- one rollout ---------------------------------------------------------------


def site_ids_of(rollout: Rollout) -> set[int]:
    """The sites of every device the rollout touches: who may act on it operates all of them."""
    return set(RolloutDevice.objects.filter(rollout=rollout).values_list("device__site_id", flat=True).distinct())


def actions_for(rollout: Rollout, stage: RolloutStage | None) -> list[str]:
    """The actions the services would take now, in the page's order (anything else they refuse with 409)."""
    moves = Rollout.MOVES[rollout.state]
    offered = []
    if stage is not None and rollout.state in (Rollout.RUNNING, Rollout.PAUSED):
        waits = stage.state == RolloutStage.WAITING_APPROVAL or (
            stage.state == RolloutStage.PENDING and stage.requires_approval and stage.approved_at is None
        )
        if waits:
            offered.append("approve")
    if Rollout.PAUSED in moves:
        offered.append("pause")
    if rollout.state in (Rollout.PAUSED, Rollout.HALTED):
        offered.append("resume")
    if Rollout.ABORTED in moves:
        offered.append("abort")
    return offered


def _rollout(pk: int) -> Rollout:
    return get_object_or_404(Rollout.objects.select_related("version__model", "template", "created_by"), pk=pk)


def _live_part(request: HttpRequest, rollout: Rollout) -> dict[str, Any]:
    """The live part's context with its rendered body and that body's digest."""
    context = _live(rollout)
    body = render_to_string("dashboard/rollout_live.html", context, request=request)
    # A poll that already shows this very body gets 204 and htmx leaves the page alone: an open
    # <details> stays open and a screen reader hears the region only when something changed.
    digest = hashlib.sha256(body.encode()).hexdigest()[:16]
    return {**context, "live_body": mark_safe(body), "digest": digest}  # noqa: S308 (our own rendered template)


def _live(rollout: Rollout) -> dict[str, Any]:
    """What the live part shows: state, stages with their progress and gates, events. A fixed number of queries."""
    stages = list(rollout.stages.select_related("approved_by").order_by("index"))
    counts = (
        RolloutDevice.objects.filter(rollout=rollout)
        .values_list("stage_index", "state")
        .annotate(n=Count("pk"))
        .order_by()
    )
    by_stage = progress_by(counts)
    results: dict[int, list[GateResult]] = {}
    for result in GateResult.objects.filter(stage__rollout=rollout):
        results.setdefault(result.stage_id, []).append(result)
    total = Progress()
    for progress in by_stage.values():
        for state, n in progress.counts.items():
            total.counts[state] = total.counts.get(state, 0) + n
    current = next((s for s in stages if s.index == rollout.current_stage), None)
    events = list(
        AuditLog.objects.filter(target_type="rollouts.rollout", target_id=str(rollout.pk)).order_by(
            "-created_at", "-pk"
        )[: EVENTS_SHOWN + 1]
    )
    actions = actions_for(rollout, current)
    return {
        "rollout": rollout,
        "total": total,
        "current": current,
        "stages": [
            StageView(
                stage,
                stage_label(stage),
                words(stage.state),
                by_stage.get(stage.index, Progress()),
                *gate_rows(results.get(stage.pk, [])),
            )
            for stage in stages
        ],
        "current_state": words(current.state) if current else "",
        "events": [(entry, _event_facts(entry)) for entry in events[:EVENTS_SHOWN]],
        "more_events": len(events) > EVENTS_SHOWN,
        "live": rollout.state not in Rollout.FINAL,
        "actions": actions,
        "actions_key": ",".join(actions) or "none",
    }


def stage_label(stage: RolloutStage) -> str:
    """What a stage adds, in words (``rollouts.plan.parse_plan``)."""
    if stage.kind == "count":
        what = f"{stage.value} device{'s' if stage.value != 1 else ''}"
    elif stage.kind == "percent":
        what = f"up to {stage.value} % of the target"
    else:
        what = f"{stage.value} more site{'s' if stage.value != 1 else ''}"
    notes = ((stage.shadow, "shadow first"), (stage.requires_approval, "needs approval"))
    extras = [text for wanted, text in notes if wanted]
    return f"{what} ({', '.join(extras)})" if extras else what


def _event_facts(entry: AuditLog) -> str:
    """An audit entry's data as "stage 0 · devices 8 · without previous version dev-1, dev-2"."""
    data = entry.data if isinstance(entry.data, dict) else {}
    shown = []
    for key, value in data.items():
        if value in (None, "", [], {}):
            continue
        if isinstance(value, list):
            value = ", ".join(str(v) for v in value)
        elif isinstance(value, dict):
            value = ", ".join(f"{k}={v}" for k, v in value.items())
        shown.append(f"{key.replace('_', ' ')} {value}")
    return " · ".join(shown)


def _page_context(request: HttpRequest, rollout: Rollout, bound: ActionForm | None = None) -> dict[str, Any]:
    may_act = access.may_act_on(request.user, site_ids_of(rollout))
    devices = rollout.devices.select_related("device__site", "from_version").order_by("stage_index", "pk")
    page = Paginator(devices, DEVICES_PER_PAGE).get_page(request.GET.get("page"))
    live = _live_part(request, rollout)
    forms = [bound if bound is not None and bound.verb == verb else ActionForm(verb=verb) for verb in live["actions"]]
    return {
        **live,
        "may_act": may_act,
        "forms": forms if may_act else [],
        "page": page,
        "query": "",
        "gates": sorted(rollout.gates().items()),
        "target": target_words(rollout.target),
    }


def target_words(target: Any) -> list[str]:
    """Each key of a target spec as a phrase: "sites: plant-a, plant-b", "labels: line=3"."""
    out = []
    for key, value in (target if isinstance(target, dict) else {}).items():
        if isinstance(value, dict):
            shown = ", ".join(f"{k}={v}" for k, v in value.items())
        elif isinstance(value, list):
            shown = ", ".join(str(v) for v in value)
        else:
            shown = str(value)
        out.append(f"{key.replace('_', ' ')}: {shown}")
    return out


@login_required
@require_GET
def rollout_detail(request: HttpRequest, pk: int) -> HttpResponse:
    rollout = _rollout(pk)
    return render(request, "dashboard/rollout.html", _page_context(request, rollout))


@login_required
@require_GET
def rollout_progress(request: HttpRequest, pk: int) -> HttpResponse:
    """The live part alone, for htmx to swap in: 204 when unchanged; the whole page when the actions changed."""
    rollout = _rollout(pk)
    context = _live_part(request, rollout)
    offered = request.GET.get("actions")
    if offered is not None and offered != context["actions_key"]:
        # The buttons outside the live part no longer match what may be done: show the page afresh.
        response = HttpResponse(status=204)
        response["HX-Refresh"] = "true"
        return response
    if request.GET.get("seen") == context["digest"]:
        return HttpResponse(status=204)
    return render(request, "dashboard/rollout_progress.html", context)


@login_required
@require_POST
def rollout_action(request: HttpRequest, pk: int, verb: str) -> HttpResponse:
    if verb not in VERBS:
        raise Http404(f"No rollout action {verb!r}.")
    rollout = _rollout(pk)
    if not access.may_act_on(request.user, site_ids_of(rollout)):
        raise PermissionDenied(f"Only admins and operators of every site of rollout {rollout.pk} may {verb} it.")
    form = ActionForm(request.POST, verb=verb)
    if not form.is_valid():
        return render(request, "dashboard/rollout.html", _page_context(request, rollout, form), status=400)
    try:
        VERBS[verb](rollout, actor=request.user, reason=form.cleaned_data["reason"])
    except ServiceError as refused:
        messages.error(request, str(refused.detail))
    else:
        messages.success(request, f"Rollout #{rollout.pk} {DONE[verb]}.")
    return redirect("rollout-page", pk=rollout.pk)


# --- starting one --------------------------------------------------------------

# ServiceError fields (``plan.stages[0].value``) are reported on the form field they start with.
FORM_FIELDS = ("plan", "target", "gates", "template")


@login_required
@require_http_methods(["GET", "POST"])
def rollout_new(request: HttpRequest) -> HttpResponse:
    """Start a rollout of a version through ``rollouts.services.create``, as ``POST /api/v1/rollouts/`` does."""
    # As the API: admins, and operators for devices at their sites only (rollouts.services.create checks them).
    if not roles.may_write(request.user):
        raise PermissionDenied("Viewers do not start rollouts.")
    chosen = request.POST.get("version") or request.GET.get("version")
    if not chosen or not chosen.isdigit():
        context = {"version": None, "form": None}
        return render(request, "dashboard/rollout_new.html", context, status=400)
    version = get_object_or_404(ModelVersion.objects.select_related("model"), pk=int(chosen))
    form = NewRolloutForm(request.POST or None, model_name=version.model.name)
    status = 200
    if request.method == "POST":
        status = 400
        if form.is_valid():
            data = form.cleaned_data
            try:
                rollout = services.create(
                    version=version,
                    target=form.target_spec(),
                    plan=None if data["template"] else data["plan"],
                    template=data["template"],
                    gates=data["gates"],
                    actor=request.user,
                    reason=data["reason"].strip(),
                )
            except ServiceError as refused:
                _report(form, refused)
                # An operator naming a site they do not operate is refused (403), as by the API.
                status = refused.status
            else:
                messages.success(request, f"Rollout #{rollout.pk} of {version} created; the scheduler starts it.")
                return redirect("rollout-page", pk=rollout.pk)
    return render(request, "dashboard/rollout_new.html", {"version": version, "form": form}, status=status)


def _report(form: NewRolloutForm, refused: ServiceError) -> None:
    placed = False
    for name, found in (refused.fields or {}).items():
        field_name = next((f for f in FORM_FIELDS if name == f or name.startswith((f"{f}.", f"{f}["))), None)
        if field_name == "target" and form.cleaned_data.get("target") == NewRolloutForm.SITES:
            field_name = "sites"
        if field_name is not None:
            form.add_error(field_name, [f"{name}: {message}" if name != field_name else message for message in found])
            placed = True
    if not placed:
        form.add_error(None, refused.detail)

"""The audit log page: who did what to which thing, when and why, newest first.

Who sees what (decided here, on the server; the page shows nothing else):
admins see every entry; anyone else sees the entries they made and those about
their own account, and an operator also those about the sites they operate and
those sites' devices. An operator's view of a site's history is then complete
for the site and its devices, while fleet-wide entries (models, tokens, other
users) stay with the admins.

Paging goes by key, not by offset: each page asks for the rows before (or after)
the last one shown, ordered by ``(created_at, id)``, so the newest page and the
thousandth cost the same and nothing counts the table. A page costs a fixed
number of queries: the entries, then at most one for the sites and one for the
devices its rows name (to show a slug and a device's name), whatever the size
of the log.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import django_filters
from django.apps import apps
from django.contrib.auth import get_user_model
from django.contrib.auth.decorators import login_required
from django.db.models import Q, QuerySet
from django.http import HttpRequest, HttpResponse, QueryDict
from django.shortcuts import render
from django.urls import reverse
from django.utils import timezone

from core import access
from core.filters import FilterSet
from core.models import AuditLog
from dashboard.query import without
from fleet.access import operated_site_ids
from fleet.models import Device, Site

PER_PAGE = 50
# Type labels for the filter's suggestions and each row, by ``AuditLog.target_type``.
TARGET_LABELS = {
    "fleet.device": "Device",
    "fleet.site": "Site",
    "rollouts.rollout": "Rollout",
    "auth.user": "User",
    "core.apitoken": "API token",
    "fleet.enrollmenttoken": "Enrollment token",
    "registry.model": "Model",
    "registry.modelversion": "Model version",
    "registry.signingkey": "Signing key",
    "rollouts.rollouttemplate": "Rollout template",
    "escalations.escalation": "Escalation",
}
# Data keys whose value names the target better than its id does, in order of preference.
NAME_KEYS = ("username", "name", "prefix", "token", "version")
_CURSOR = re.compile(r"^(-?\d{1,20})\.(\d{1,19})$")
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ISO_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d")


class AuditFilter(FilterSet):
    actor = django_filters.CharFilter(field_name="actor_label", label="Who")
    action = django_filters.CharFilter(method="by_action", label="Action")
    target_type = django_filters.CharFilter(label="Target type")
    target_id = django_filters.CharFilter(label="Target id")
    since = django_filters.DateFilter(method="by_since", label="From")
    until = django_filters.DateFilter(method="by_until", label="To")
    q = django_filters.CharFilter(field_name="reason", lookup_expr="icontains", label="Reason contains")

    class Meta:
        model = AuditLog
        fields: list[str] = []

    def by_action(self, queryset: QuerySet[AuditLog], name: str, value: str) -> QuerySet[AuditLog]:
        # "rollout.pause" is that action; "rollout" (no dot: every action has one) is every rollout.* action.
        # One condition either way, which the (action, created_at) index answers.
        value = value.strip()
        return queryset.filter(action=value) if "." in value else queryset.filter(action__startswith=f"{value}.")

    def by_since(self, queryset: QuerySet[AuditLog], name: str, value: date) -> QuerySet[AuditLog]:
        return queryset.filter(created_at__gte=_day_start(value))

    def by_until(self, queryset: QuerySet[AuditLog], name: str, value: date) -> QuerySet[AuditLog]:
        # The "to" day is included: entries before the next day's start (and after 9999-12-31, none).
        if value == date.max:
            return queryset
        return queryset.filter(created_at__lt=_day_start(value + timedelta(days=1)))


def _day_start(day: date) -> datetime:
    # A comparison on created_at itself (not created_at::date) keeps its index usable.
    return timezone.make_aware(datetime.combine(day, time.min))


def visible_to(user: Any) -> QuerySet[AuditLog]:
    """The entries ``user`` may read (see the module docstring)."""
    entries = AuditLog.objects.all()
    if access.is_admin(user):
        return entries
    mine = Q(actor=user) | Q(target_type=get_user_model()._meta.label_lower, target_id=str(user.pk))
    sites = operated_site_ids(user) or frozenset()
    if sites:
        devices = Device.objects.filter(site__in=sites).values("device_id")
        mine |= Q(target_type="fleet.site", target_id__in=[str(pk) for pk in sorted(sites)])
        mine |= Q(target_type="fleet.device", target_id__in=devices)
    return entries.filter(mine)


@dataclass
class Cursor:
    """A row's place in the order: its time in microseconds since the epoch, and its id."""

    at: datetime
    pk: int

    @classmethod
    def of(cls, entry: AuditLog) -> str:
        stamp = entry.created_at - EPOCH
        return f"{stamp // timedelta(microseconds=1)}.{entry.pk}"

    @classmethod
    def parse(cls, raw: str) -> Cursor | None:
        found = _CURSOR.match(raw)
        if not found:
            return None
        try:
            at = EPOCH + timedelta(microseconds=int(found[1]))
        except OverflowError:
            return None
        pk = int(found[2])
        return cls(at, pk) if pk < 2**63 else None

    def older(self) -> Q:
        # created_at <= at is redundant with the rest; it lets the scan start at the cursor in the index.
        return Q(created_at__lte=self.at) & (Q(created_at__lt=self.at) | Q(created_at=self.at, pk__lt=self.pk))

    def newer(self) -> Q:
        return Q(created_at__gte=self.at) & (Q(created_at__gt=self.at) | Q(created_at=self.at, pk__gt=self.pk))


@dataclass
class Page:
    entries: list[AuditLog]
    newer: str | None  # the cursor for the previous (newer) page, when there is one
    older: str | None


def page_of(entries: QuerySet[AuditLog], before: Cursor | None, after: Cursor | None) -> Page:
    """One page of ``entries``, newest first, before or after a cursor; one query (two with a cursor)."""
    newest_first = entries.order_by("-created_at", "-pk")
    if after is not None:
        rows = list(entries.filter(after.newer()).order_by("created_at", "pk")[: PER_PAGE + 1])
        more_newer = len(rows) > PER_PAGE
        rows = rows[:PER_PAGE][::-1]
        more_older = entries.filter(after.older() | Q(created_at=after.at, pk=after.pk)).exists()
    else:
        scoped = newest_first.filter(before.older()) if before is not None else newest_first
        rows = list(scoped[: PER_PAGE + 1])
        more_older = len(rows) > PER_PAGE
        rows = rows[:PER_PAGE]
        more_newer = (
            before is not None and entries.filter(before.newer() | Q(created_at=before.at, pk=before.pk)).exists()
        )
    return Page(
        entries=rows,
        newer=Cursor.of(rows[0]) if rows and more_newer else None,
        older=Cursor.of(rows[-1]) if rows and more_older else None,
    )


@dataclass
class Row:
    """One entry as the page shows it."""

    entry: AuditLog
    target_label: str
    target_name: str
    target_url: str | None
    data: list[tuple[str, str]]


def rows_of(entries: list[AuditLog]) -> list[Row]:
    """Each entry with its target named and linked; one query for the sites and one for the devices named."""
    site_pks = {int(e.target_id) for e in entries if e.target_type == "fleet.site" and e.target_id.isdigit()}
    device_ids = {e.target_id for e in entries if e.target_type == "fleet.device"}
    slugs = dict(Site.objects.filter(pk__in=site_pks).values_list("pk", "slug")) if site_pks else {}
    names = dict(Device.objects.filter(device_id__in=device_ids).values_list("device_id", "name")) if device_ids else {}
    return [_row(entry, slugs, names) for entry in entries]


def _row(entry: AuditLog, slugs: dict[int, str], names: dict[str, str]) -> Row:
    kind, key = entry.target_type, entry.target_id
    data = entry.data if isinstance(entry.data, dict) else {"data": entry.data}
    url = None
    name = next((str(data[k]) for k in NAME_KEYS if data.get(k) not in (None, "", [], {})), f"#{key}")
    if kind == "fleet.device":
        url = reverse("device-page", args=[key])
        name = f"{names[key]} ({key})" if key in names else key
    elif kind == "fleet.site" and key.isdigit() and int(key) in slugs:
        url = reverse("site-page", args=[slugs[int(key)]])
        name = slugs[int(key)]
    elif kind == "rollouts.rollout":
        # The rollouts' pages live at /rollouts/<pk>/ (routed by the rollouts dashboard).
        url = f"/rollouts/{key}/"
        name = f"#{key}"
    return Row(entry, _type_label(kind), name, url, [(k, show(v)) for k, v in sorted(data.items())])


def _type_label(kind: str) -> str:
    if kind in TARGET_LABELS:
        return TARGET_LABELS[kind]
    try:
        return str(apps.get_model(kind)._meta.verbose_name).capitalize()
    except (LookupError, ValueError):
        return kind


def show(value: Any) -> str:
    """A data value as a person reads it: no ``None``, lists joined, objects as compact JSON."""
    if value is None or value == "" or value == [] or value == {}:
        return "none"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, str) and _ISO_TIME.match(value):
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            return value
        if timezone.is_aware(moment):
            return timezone.localtime(moment).strftime("%Y-%m-%d %H:%M %Z")
    if isinstance(value, list) and all(isinstance(v, (str, int, float)) for v in value):
        return ", ".join(str(v) for v in value)
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True, separators=(", ", ": "))
    return str(value)


@login_required
def audit(request: HttpRequest) -> HttpResponse:
    """The audit log, filtered and a page at a time; each reader sees what ``visible_to`` allows."""
    found = AuditFilter(request.GET, queryset=visible_to(request.user))
    before, after = _cursor(request.GET, "before"), _cursor(request.GET, "after")
    cursor_error = any(request.GET.get(n) and c is None for n, c in (("before", before), ("after", after)))
    valid = found.is_valid() and not cursor_error
    page = page_of(found.qs, before, after) if valid else None
    context = {
        "filter": found,
        "cursor_error": cursor_error,
        "page": page,
        "rows": rows_of(page.entries) if page else [],
        "query": without(request.GET, "before", "after"),
        "filtered": any(v for k, v in request.GET.items() if k not in ("before", "after")),
        "target_labels": sorted(TARGET_LABELS.items()),
        "everything": access.is_admin(request.user),
        "operator": access.role_of(request.user) == access.OPERATOR,
    }
    return render(request, "dashboard/audit.html", context, status=200 if valid else 400)


def _cursor(params: QueryDict, name: str) -> Cursor | None:
    raw = params.get(name)
    return Cursor.parse(raw) if raw else None

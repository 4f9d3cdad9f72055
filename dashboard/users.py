"""The users page, for admins: each user's role and operated sites, and changing them.

Roles change only through ``fleet.access.set_role``, the one place that checks
the rules (an operator needs a site, a superuser stays an admin, nobody takes
their own admin role away) and writes the audit row.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import messages
from django.contrib.auth import get_user_model
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.db.models import Prefetch, Q, QuerySet
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_http_methods

from core import access
from core.errors import ServiceError
from core.models import Role
from dashboard.guards import require_admin
from fleet.access import set_role
from fleet.models import Site

PER_PAGE = 50


def role_shown(user: Any) -> str:
    """``core.access.role_of`` for a user fetched with ``select_related("role")``, without a query of its own.

    The same rule: a superuser is an admin; else the role row; else staff are admins and others viewers.
    An inactive user (no role at all to ``role_of``) is shown with the role they would have, marked inactive.
    """
    if user.is_superuser:
        return access.ADMIN
    try:
        return str(user.role.kind)
    except Role.DoesNotExist:
        return access.ADMIN if user.is_staff else access.VIEWER


def with_role(users: QuerySet[Any], kind: str) -> QuerySet[Any]:
    """The users whose role is ``kind``, by the same rule, in SQL."""
    no_row = Q(role__isnull=True)
    if kind == access.ADMIN:
        return users.filter(Q(is_superuser=True) | Q(role__kind=kind) | (no_row & Q(is_staff=True)))
    ordinary = users.filter(is_superuser=False)
    if kind == access.OPERATOR:
        return ordinary.filter(role__kind=kind)
    return ordinary.filter(Q(role__kind=kind) | (no_row & Q(is_staff=False)))


class UserFilterForm(forms.Form):
    q = forms.CharField(required=False, max_length=150, label="Username")
    role = forms.ChoiceField(required=False, choices=[("", "any role"), *Role.KINDS])


class SiteChoices(forms.ModelMultipleChoiceField):
    def label_from_instance(self, obj: Any) -> str:
        return f"{obj.name} ({obj.slug})" if obj.name and obj.name != obj.slug else str(obj.slug)


class RoleForm(forms.Form):
    kind = forms.ChoiceField(choices=Role.KINDS, widget=forms.RadioSelect, label="Role")
    sites = SiteChoices(
        queryset=Site.objects.order_by("slug"),
        to_field_name="slug",
        required=False,
        widget=forms.CheckboxSelectMultiple,
        label="Sites operated (operators only)",
    )
    reason = forms.CharField(
        max_length=2000,
        widget=forms.Textarea(attrs={"rows": 2}),
        label="Reason (required)",
        error_messages={"required": "Say why the role changes."},
    )


def _users() -> QuerySet[Any]:
    return (
        get_user_model()
        .objects.select_related("role")
        .prefetch_related(Prefetch("operated_sites", queryset=Site.objects.order_by("slug")))
    )


@login_required
def users(request: HttpRequest) -> HttpResponse:
    """Every user with their role and sites, filtered by name and role, 50 a page."""
    require_admin(request, "see and change users' roles")
    form = UserFilterForm(request.GET)
    valid = form.is_valid()
    page = None
    if valid:
        found = _users().order_by("username", "pk")
        if form.cleaned_data["q"]:
            found = found.filter(username__icontains=form.cleaned_data["q"])
        if form.cleaned_data["role"]:
            found = with_role(found, form.cleaned_data["role"])
        page = Paginator(found, PER_PAGE).get_page(request.GET.get("page"))
    kept = request.GET.copy()
    kept.pop("page", None)
    context = {
        "form": form,
        "page": page,
        "rows": [(user, role_shown(user)) for user in page or []],
        "query": kept.urlencode(),
        "filtered": bool(form.data.get("q") or form.data.get("role")),
    }
    return render(request, "dashboard/users.html", context, status=200 if valid else 400)


@login_required
@require_http_methods(["GET", "POST"])
def change_role(request: HttpRequest, pk: int) -> HttpResponse:
    """One user's role and sites: the form, and its POST through ``set_role``."""
    require_admin(request, "see and change users' roles")
    user = get_object_or_404(_users(), pk=pk)
    current = role_shown(user)
    initial = {"kind": current, "sites": list(user.operated_sites.all())}
    form = RoleForm(request.POST or None, initial=initial)
    if request.method == "POST" and form.is_valid():
        try:
            set_role(
                actor=request.user,
                user=user,
                kind=form.cleaned_data["kind"],
                sites=form.cleaned_data["sites"],
                reason=form.cleaned_data["reason"],
            )
        except ServiceError as refused:
            form.add_error(None, str(refused.detail))
        else:
            role = form.cleaned_data["kind"]
            where = ", ".join(site.slug for site in form.cleaned_data["sites"]) if role == access.OPERATOR else ""
            messages.success(
                request, f"{user.username} is now {_article(role)} {role}{f' of {where}' if where else ''}."
            )
            return redirect("users")
    status = 400 if request.method == "POST" else 200
    context = {"subject": user, "current": current, "form": form, "self_edit": user.pk == request.user.pk}
    return render(request, "dashboard/user_role.html", context, status=status)


def _article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"

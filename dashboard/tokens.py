"""The tokens page, for admins: API tokens for CI and scripts, and enrollment tokens for new devices.

A new token's secret is in the answer to the POST that creates it and nowhere
else: the server keeps its hash, the page is not cached, and the next request
(a reload included) shows only its prefix. API tokens are issued and revoked
by ``core.services``, the code behind ``/api/v1/tokens/``, so the scopes a user's
role allows and the audit rows are the same whichever way a token is made.

Enrollment tokens are issued and revoked by ``fleet.services``, the code behind
``POST /api/v1/sites/<slug>/enrollment-tokens/`` and
``POST /api/v1/enrollment-tokens/<id>/revoke/``.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any
from urllib.parse import urlencode

from django import forms
from django.conf import settings
from django.contrib import messages
from django.contrib.auth import get_user_model
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.utils.cache import add_never_cache_headers
from django.views.decorators.http import require_http_methods, require_POST

from core import services
from core.errors import ServiceError
from core.models import ApiToken
from dashboard.guards import require_admin
from fleet import services as fleet_services
from fleet.models import EnrollmentToken, Site

PER_PAGE = 50
EXPIRY_CHOICES = [("7", "7 days"), ("30", "30 days"), ("90", "90 days"), ("365", "1 year"), ("never", "never")]
SCOPE_HELP = {
    "read": "read everything",
    "fleet": "devices, sites, alerts",
    "publish": "publish model versions",
    "rollout": "start and steer rollouts",
    "admin": "manage API tokens",
}


class ApiTokenForm(forms.Form):
    name = forms.CharField(max_length=100)
    user = forms.CharField(max_length=150, label="For user", help_text="Whose rights the token acts with.")
    scopes = forms.MultipleChoiceField(
        choices=[(s, f"{s}: {SCOPE_HELP[s]}") for s in ApiToken.SCOPES], widget=forms.CheckboxSelectMultiple
    )
    expires = forms.ChoiceField(choices=EXPIRY_CHOICES, initial="90", label="Expires after")

    def clean_user(self) -> Any:
        username = self.cleaned_data["user"].strip()
        user = get_user_model().objects.filter(username=username).first()
        if user is None:
            raise forms.ValidationError(f"No user is called {username!r}.")
        return user


class EnrollmentTokenForm(forms.Form):
    site = forms.ModelChoiceField(queryset=Site.objects.order_by("slug"), to_field_name="slug", empty_label=None)
    ttl_hours = forms.IntegerField(min_value=1, max_value=24 * 30, label="Valid for (hours)")
    note = forms.CharField(max_length=200, required=False, label="Note (optional)")


class RevokeForm(forms.Form):
    reason = forms.CharField(max_length=2000, error_messages={"required": "Say why the token is revoked."})


@login_required
@require_http_methods(["GET", "POST"])
def tokens(request: HttpRequest) -> HttpResponse:
    """Both kinds of token; a POST creates one and answers with its secret, this once."""
    require_admin(request, "manage tokens")
    api_form = ApiTokenForm(initial={"user": request.user.get_username(), "expires": "90"}, prefix="api")
    enrollment_form = EnrollmentTokenForm(initial={"ttl_hours": settings.ENROLLMENT_TOKEN_TTL_HOURS}, prefix="enroll")
    created: dict[str, Any] | None = None
    status = 200
    if request.method == "POST":
        kind = request.POST.get("kind")
        if kind == "api":
            api_form = ApiTokenForm(request.POST, prefix="api")
            created = _issue_api(request, api_form)
        elif kind == "enrollment":
            enrollment_form = EnrollmentTokenForm(request.POST, prefix="enroll")
            created = _issue_enrollment(request, enrollment_form)
        else:
            return HttpResponse("Unknown kind of token.", status=400, content_type="text/plain")
        status = 201 if created else 400
    response = render(
        request,
        "dashboard/tokens.html",
        _context(request, api_form, enrollment_form, created),
        status=status,
    )
    # The answer may hold a secret: no cache, proxy or back button keeps a copy.
    add_never_cache_headers(response)
    return response


def _issue_api(request: HttpRequest, form: ApiTokenForm) -> dict[str, Any] | None:
    if not form.is_valid():
        return None
    days = form.cleaned_data["expires"]
    try:
        token, secret = services.issue_token(
            actor=request.user,
            user=form.cleaned_data["user"],
            name=form.cleaned_data["name"],
            scopes=form.cleaned_data["scopes"],
            expires_at=None if days == "never" else timezone.now() + timedelta(days=int(days)),
        )
    except ValidationError as refused:
        for field, problems in refused.message_dict.items():
            form.add_error(field if field in ("scopes", "user") else None, problems)
        return None
    return {"kind": "API token", "name": token.name, "secret": secret, "row": token}


def _issue_enrollment(request: HttpRequest, form: EnrollmentTokenForm) -> dict[str, Any] | None:
    if not form.is_valid():
        return None
    site: Site = form.cleaned_data["site"]
    row, secret = fleet_services.issue_enrollment_token(
        site, actor=request.user, ttl=timedelta(hours=form.cleaned_data["ttl_hours"]), note=form.cleaned_data["note"]
    )
    return {"kind": "Enrollment token", "name": f"for {site.slug}", "secret": secret, "row": row}


@login_required
@require_POST
def revoke_api_token(request: HttpRequest, pk: int) -> HttpResponse:
    require_admin(request, "manage tokens")
    token = get_object_or_404(ApiToken, pk=pk)
    return _revoke(
        request,
        token.name,
        lambda reason: services.revoke_token(token, actor=request.user, reason=reason),
        f"API token {token.name} ({token.prefix}…) revoked: it is refused from now on.",
    )


@login_required
@require_POST
def revoke_enrollment_token(request: HttpRequest, pk: int) -> HttpResponse:
    require_admin(request, "manage tokens")
    token = get_object_or_404(EnrollmentToken.objects.select_related("site"), pk=pk)
    return _revoke(
        request,
        token.prefix,
        lambda reason: fleet_services.revoke_enrollment_token(token, actor=request.user, reason=reason),
        f"Enrollment token {token.prefix}… for {token.site.slug} revoked.",
    )


def _revoke(request: HttpRequest, name: str, revoke: Callable[[str], Any], done: str) -> HttpResponse:
    """Check the reason, revoke through the service, and say on the tokens page what happened."""
    form = RevokeForm(request.POST)
    if not form.is_valid():
        messages.error(request, f"{name} was not revoked: {' '.join(str(e) for e in form.errors['reason'])}")
        return redirect("tokens")
    try:
        revoke(form.cleaned_data["reason"])
    except ServiceError as refused:
        messages.error(request, str(refused.detail))
    else:
        messages.success(request, done)
    return redirect("tokens")


def _context(
    request: HttpRequest, api_form: ApiTokenForm, enrollment_form: EnrollmentTokenForm, created: dict[str, Any] | None
) -> dict[str, Any]:
    now = timezone.now()
    api = ApiToken.objects.select_related("user").order_by("-created_at", "-pk")
    enrollment = EnrollmentToken.objects.select_related("site", "created_by", "used_by").order_by("-created_at", "-pk")
    api_page = Paginator(api, PER_PAGE).get_page(request.GET.get("page"))
    enrollment_page = Paginator(enrollment, PER_PAGE).get_page(request.GET.get("epage"))
    return {
        "api_form": api_form,
        "enrollment_form": enrollment_form,
        "created": created,
        "api_page": api_page,
        "api_rows": [(t, _api_state(t, now)) for t in api_page],
        "enrollment_page": enrollment_page,
        "enrollment_rows": [(t, _enrollment_state(t, now)) for t in enrollment_page],
        "has_sites": Site.objects.exists(),
        # Each list's page links keep the other list's page.
        "api_query": _only(request, "epage"),
        "enrollment_query": _only(request, "page"),
    }


def _only(request: HttpRequest, name: str) -> str:
    value = request.GET.get(name)
    return urlencode({name: value}) if value else ""


def _api_state(token: ApiToken, now: Any) -> str:
    if token.revoked_at is not None:
        return "revoked"
    if token.expires_at is not None and token.expires_at <= now:
        return "expired"
    return "active"


def _enrollment_state(token: EnrollmentToken, now: Any) -> str:
    if token.revoked_at is not None:
        return "revoked"
    if token.used_at is not None:
        return "used"
    if token.expires_at <= now:
        return "expired"
    return "usable"

"""The admin for API tokens and the audit log.

Tokens are issued and revoked only through ``core.services`` (audited); the
secret is shown once on the page after "Add", never stored. The audit log is
read-only here.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import reverse

from core import services
from core.errors import ServiceError
from core.models import ApiToken, AuditLog

TOKEN_FIELDS = ("name", "prefix", "user", "scopes", "created_at", "expires_at", "last_used_at", "revoked_at")


class ApiTokenAddForm(forms.ModelForm):
    scopes = forms.MultipleChoiceField(
        choices=[(scope, scope) for scope in ApiToken.SCOPES], widget=forms.CheckboxSelectMultiple
    )

    class Meta:
        model = ApiToken
        fields = ("name", "user", "scopes", "expires_at")
        help_texts = {"expires_at": "Leave empty for a token that does not expire."}

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if self.errors:
            return data
        try:
            data["scopes"] = services.check_token_request(
                user=data["user"], scopes=data["scopes"], expires_at=data.get("expires_at")
            )
        except ValidationError as exc:
            for field, found in exc.message_dict.items():
                self.add_error(field if field in self.fields else None, found)
        return data


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    list_display = ("name", "prefix", "user", "scopes", "created_at", "expires_at", "last_used_at", "revoked_at")
    list_filter = (("revoked_at", admin.EmptyFieldListFilter),)
    search_fields = ("name", "prefix", "user__username")
    actions = ["revoke"]

    def get_form(self, request: HttpRequest, obj: Any = None, change: bool = False, **kwargs: Any) -> Any:
        if obj is None:
            kwargs["form"] = ApiTokenAddForm
        return super().get_form(request, obj, change=change, **kwargs)

    def get_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        return ApiTokenAddForm.Meta.fields if obj is None else TOKEN_FIELDS

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        # A token's scopes, owner and expiry change only by issuing a new one and revoking this.
        return () if obj is None else TOKEN_FIELDS

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # Revoke instead: a deleted token leaves its audit rows pointing at nothing.
        return False

    def save_model(self, request: HttpRequest, obj: ApiToken, form: Any, change: bool) -> None:
        if change:
            return
        data = form.cleaned_data
        token, secret = services.issue_token(
            actor=request.user,
            user=data["user"],
            name=data["name"],
            scopes=data["scopes"],
            expires_at=data.get("expires_at"),
        )
        obj.pk = token.pk
        obj.refresh_from_db()
        request._issued_secret = secret  # type: ignore[attr-defined]

    def response_add(self, request: HttpRequest, obj: ApiToken, post_url_continue: str | None = None) -> HttpResponse:
        # The secret goes into this page only: not a message (it would sit in a cookie or the session).
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": "API token issued",
            "token": obj,
            "secret": request._issued_secret,  # type: ignore[attr-defined]
            "changelist_url": reverse("admin:core_apitoken_changelist"),
        }
        # Admin views are never_cache, so this page carries Cache-Control: no-store.
        return TemplateResponse(request, "admin/core/apitoken/issued.html", context)

    @admin.action(description="Revoke the selected API tokens")
    def revoke(self, request: HttpRequest, queryset: QuerySet[ApiToken]) -> None:
        label = getattr(request.user, "username", "")
        done = []
        for token in queryset:
            try:
                services.revoke_token(token, actor=request.user, reason=f"Revoked in the admin by {label}.")
            except ServiceError as exc:
                self.message_user(request, exc.detail, messages.WARNING)
            else:
                done.append(token.prefix)
        if done:
            self.message_user(request, f"Revoked {len(done)} API token(s): {', '.join(done)}.", messages.SUCCESS)


@admin.register(AuditLog)
class AuditLogAdmin(admin.ModelAdmin):
    list_display = ("created_at", "actor_label", "action", "target_type", "target_id", "reason")
    list_filter = ("action",)
    search_fields = ("actor_label", "target_id", "reason")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

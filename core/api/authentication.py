"""API authentication every app shares: scoped tokens for CI and scripts, and the device identity.

Devices authenticate with their enrollment secret (``fleet.api.authentication.DeviceAuthentication``,
listed in the settings); what other apps need is only ``DeviceUser`` and ``IsDevice``.
"""

from __future__ import annotations

from typing import Any

from django.utils import timezone
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import authentication, exceptions, permissions

from core import access, tokens
from core.models import ApiToken


class ApiTokenAuthentication(authentication.BaseAuthentication):
    """``Authorization: Bearer eft_...``; ``request.auth`` is the ApiToken row."""

    keyword = "Bearer"

    def authenticate(self, request: Any) -> tuple[Any, ApiToken] | None:
        header = authentication.get_authorization_header(request).decode("latin-1")
        if not header.startswith(f"{self.keyword} eft_"):
            return None
        key = header[len(self.keyword) + 1 :].strip()
        token = ApiToken.objects.select_related("user").filter(key_hash=tokens.digest(key)).first()
        if token is None or not token.is_usable() or not token.user.is_active:
            raise exceptions.AuthenticationFailed("Invalid, expired or revoked API token.")
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=timezone.now())
        return token.user, token

    def authenticate_header(self, request: Any) -> str:
        return self.keyword


class DeviceUser:
    """The identity of an authenticated device on API requests."""

    is_authenticated = True
    is_active = True
    is_staff = False

    def __init__(self, device: Any) -> None:
        self.device = device
        self.username = f"device:{device.device_id}"

    def __str__(self) -> str:
        return self.username


class HasScope(permissions.BasePermission):
    """Reads for any signed-in person; writes by role, and for tokens by their scopes too.

    Views set ``required_scopes`` (for unsafe methods). Writes need an admin, or an
    operator where the view sets ``operators_act = True``: its service then checks
    that the operator operates the sites the action touches (``fleet.access``).
    A token acts with its user's role, narrowed by its scopes; ``read`` is implied by any scope.
    """

    def has_permission(self, request: Any, view: Any) -> bool:
        if not (request.user and request.user.is_authenticated) or isinstance(request.user, DeviceUser):
            return False
        if request.method in permissions.SAFE_METHODS:
            return bool(request.auth.scopes) if isinstance(request.auth, ApiToken) else True
        role = access.role_of(request.user)
        if role != access.ADMIN and not (role == access.OPERATOR and getattr(view, "operators_act", False)):
            return False
        if isinstance(request.auth, ApiToken):
            return set(getattr(view, "required_scopes", ())).issubset(request.auth.scopes)
        return True


class IsAdmin(permissions.BasePermission):
    """Admins in a session; a token only with the ``admin`` scope, and only while its user is an admin.

    Guards token management: a CI token with ``publish`` cannot mint itself more.
    """

    def has_permission(self, request: Any, view: Any) -> bool:
        user = request.user
        if not (user and user.is_authenticated) or isinstance(user, DeviceUser):
            return False
        if not access.is_admin(user):
            return False
        if isinstance(request.auth, ApiToken):
            return "admin" in request.auth.scopes
        return True


class IsDevice(permissions.BasePermission):
    def has_permission(self, request: Any, view: Any) -> bool:
        return isinstance(request.user, DeviceUser)


class ApiTokenScheme(OpenApiAuthenticationExtension):
    target_class = ApiTokenAuthentication
    name = "apiToken"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {"type": "http", "scheme": "bearer", "description": "API token (eft_...) with scopes."}

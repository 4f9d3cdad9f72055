"""Refusals the dashboard's admin-only pages share; the services refuse the same requests on their own."""

from __future__ import annotations

from django.core.exceptions import PermissionDenied
from django.http import HttpRequest

from core import access


def require_admin(request: HttpRequest, what: str) -> None:
    """403 (the styled 403 page, saying ``what`` only admins do) unless the signed-in person is an admin."""
    if not access.is_admin(request.user):
        raise PermissionDenied(f"Only admins {what}.")

"""What every dashboard template knows about the signed-in person: their role, read only when a page asks."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.http import HttpRequest
from django.utils.functional import SimpleLazyObject

from core import access


def role(request: HttpRequest) -> dict[str, Any]:
    """``role``: admin, operator, viewer, or "" when nobody is signed in (the menu shows admins' pages by it).

    ``poll_s``: how often live parts of a page ask for their fragment (``DASHBOARD_POLL_S``).
    """
    return {
        "role": SimpleLazyObject(lambda: access.role_of(getattr(request, "user", None)) or ""),
        "poll_s": settings.DASHBOARD_POLL_S,
    }

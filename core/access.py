"""Who may do what: the role of a user, one answer for the API, the dashboard and the services.

``admin`` may do everything; ``operator`` may act only on the sites they operate
(``fleet.access`` checks which); ``viewer`` only reads. A token never does more than
its user could in a session: its scopes narrow what the user's role allows.
"""

from __future__ import annotations

from typing import Any

from core.models import Role

ADMIN, OPERATOR, VIEWER = Role.ADMIN, Role.OPERATOR, Role.VIEWER
# The token scopes each role may hold: writes need a role that may write.
ROLE_SCOPES = {
    ADMIN: frozenset({"read", "fleet", "publish", "rollout", "admin"}),
    OPERATOR: frozenset({"read", "fleet", "rollout"}),
    VIEWER: frozenset({"read"}),
}
_CACHE = "_edgefleet_role"


def role_of(user: Any) -> str | None:
    """The user's role, or None for anyone who is not a signed-in person (devices, anonymous)."""
    if user is None or not getattr(user, "is_authenticated", False) or not hasattr(user, "_meta"):
        return None
    if not user.is_active:
        return None
    cached = getattr(user, _CACHE, None)
    if cached is not None:
        return str(cached)
    if user.is_superuser:
        kind = ADMIN
    else:
        row = Role.objects.filter(user=user).values_list("kind", flat=True).first()
        kind = row or (ADMIN if user.is_staff else VIEWER)
    setattr(user, _CACHE, kind)
    return kind


def forget(user: Any) -> None:
    """Drop the role remembered on this user object, after it changed."""
    if hasattr(user, _CACHE):
        delattr(user, _CACHE)


def is_admin(user: Any) -> bool:
    return role_of(user) == ADMIN


def may_write(user: Any) -> bool:
    """Admins and operators act; viewers and anyone else only read."""
    return role_of(user) in (ADMIN, OPERATOR)

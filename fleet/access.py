"""Which sites a user may act on, and giving users their roles.

An admin acts everywhere, an operator on the sites they operate
(``Site.operators``), a viewer nowhere. Services call ``require_sites`` with the
sites an action touches before changing anything, so the API, the dashboard and
the CLI refuse the same requests; ``actor=None`` is the system itself (beat, CLI
run by the host's administrator) and is never refused.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.db import transaction

from core import access
from core.errors import ServiceError
from core.models import AuditLog, Role
from fleet.models import Site


def operated_site_ids(user: Any) -> frozenset[int] | None:
    """The ids of the sites ``user`` may act on; None means every site."""
    role = access.role_of(user)
    if role == access.ADMIN:
        return None
    if role == access.OPERATOR:
        return frozenset(Site.objects.filter(operators=user).values_list("pk", flat=True))
    return frozenset()


def may_act_on(user: Any, site_ids: Iterable[int | None]) -> bool:
    """Whether ``user`` may act on every one of these sites (a device with no site: admins only)."""
    allowed = operated_site_ids(user)
    if allowed is None:
        return True
    wanted = set(site_ids)
    return bool(wanted) and None not in wanted and wanted <= allowed


def require_sites(actor: Any, site_ids: Iterable[int | None], action: str) -> None:
    """Refuse with 403 unless ``actor`` may act on all of these sites; the system (None) always may."""
    if actor is None or not hasattr(actor, "_meta"):
        return
    wanted = set(site_ids)
    if may_act_on(actor, wanted):
        return
    role = access.role_of(actor) or "signed out"
    if role == access.VIEWER:
        detail = f"{actor.username} is a viewer and may not {action}."
    else:
        allowed = operated_site_ids(actor) or frozenset()
        outside = [s for s in wanted if s not in allowed]
        named = sorted(Site.objects.filter(pk__in=[s for s in outside if s]).values_list("slug", flat=True))
        where = ", ".join(named) or "devices without a site"
        detail = f"{actor.username} may not {action} at {where}: not an operator of it."
    raise ServiceError("site_forbidden", detail, 403)


def require_admin(actor: Any, action: str) -> None:
    """Refuse with 403 unless ``actor`` is an admin (or the system)."""
    if actor is None or not hasattr(actor, "_meta") or access.is_admin(actor):
        return
    raise ServiceError("admin_only", f"Only an admin may {action}; {actor.username} is not one.", 403)


def set_role(*, actor: Any, user: Any, kind: str, sites: Iterable[Site] = (), reason: str = "") -> Role:
    """Give ``user`` a role (and, for an operator, the sites they act on), audited."""
    require_admin(actor, "change roles")
    if kind not in dict(Role.KINDS):
        raise ServiceError("invalid_role", f"Unknown role {kind!r}; one of: admin, operator, viewer.", 400)
    chosen = list(sites) if kind == Role.OPERATOR else []
    if kind == Role.OPERATOR and not chosen:
        raise ServiceError("invalid_role", "An operator needs at least one site to operate.", 400)
    if user.is_superuser and kind != Role.ADMIN:
        raise ServiceError("invalid_role", f"{user.username} is a superuser, and so always an admin.", 400)
    if actor is not None and getattr(actor, "pk", None) == user.pk and kind != Role.ADMIN:
        raise ServiceError("invalid_role", "An admin cannot take their own admin role away.", 400)
    with transaction.atomic():
        before = Role.objects.filter(user=user).values_list("kind", flat=True).first()
        row, _ = Role.objects.update_or_create(user=user, defaults={"kind": kind})
        user.operated_sites.set(chosen)
        AuditLog.record(
            actor=actor,
            action="user.set_role",
            target=user,
            reason=reason,
            username=user.username,
            role=kind,
            before=before,
            sites=sorted(site.slug for site in chosen),
        )
    access.forget(user)
    return row

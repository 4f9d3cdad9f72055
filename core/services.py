"""API token workflows: ``manage.py api_token``, ``/api/v1/tokens/`` and the admin all go through here.

Each writes an AuditLog row in the same transaction as the change, so a token
never exists, or stops working, without a record of who did it and why.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from core import access
from core.errors import ServiceError
from core.models import ApiToken, AuditLog

ADMIN_SCOPE = "admin"


def check_token_request(*, user: Any, scopes: Iterable[str], expires_at: datetime | None) -> list[str]:
    """The scopes, checked and in a stable order; a ``ValidationError`` keyed by field otherwise."""
    wanted = list(dict.fromkeys(scopes))
    errors: dict[str, str] = {}
    unknown = sorted(set(wanted) - set(ApiToken.SCOPES))
    if unknown:
        errors["scopes"] = f"Unknown scopes: {', '.join(unknown)}. Known: {', '.join(ApiToken.SCOPES)}."
    elif not wanted:
        errors["scopes"] = f"Name at least one scope of: {', '.join(ApiToken.SCOPES)}."
    elif not set(wanted) <= access.ROLE_SCOPES.get(access.role_of(user) or access.VIEWER, frozenset()):
        # A token can never do more than its user could in a session.
        role = access.role_of(user) or access.VIEWER
        allowed = ", ".join(s for s in ApiToken.SCOPES if s in access.ROLE_SCOPES[role])
        errors["scopes"] = f"{user.username} is {_article(role)} {role}: their tokens may have only {allowed}."
    if not user.is_active:
        errors["user"] = f"The user {user.username} is inactive."
    if expires_at is not None:
        if timezone.is_naive(expires_at):
            errors["expires_at"] = "Give the expiry with a time zone (e.g. 2027-01-31T00:00:00Z)."
        elif expires_at <= timezone.now():
            errors["expires_at"] = "The expiry is in the past."
    if errors:
        raise ValidationError(errors)
    return [scope for scope in ApiToken.SCOPES if scope in wanted]


def issue_token(
    *,
    actor: Any,
    user: Any,
    name: str,
    scopes: Iterable[str],
    expires_at: datetime | None = None,
    via: ApiToken | None = None,
) -> tuple[ApiToken, str]:
    """Create a token for ``user``; the secret is returned once and only its hash is stored.

    ``via`` is the token the actor used, when it was one: the audit row names its prefix.
    """
    ordered = check_token_request(user=user, scopes=scopes, expires_at=expires_at)
    with transaction.atomic():
        token, secret = ApiToken.issue(user, name=name, scopes=ordered, expires_at=expires_at)
        AuditLog.record(
            actor=actor,
            action="api_token.issue",
            target=token,
            prefix=token.prefix,
            name=token.name,
            user=user.username,
            scopes=token.scopes,
            expires_at=expires_at.isoformat() if expires_at else None,
            **_via(via),
        )
    return token, secret


def revoke_token(token: ApiToken, *, actor: Any, reason: str, via: ApiToken | None = None) -> ApiToken:
    """Refuse the token from now on, and record who and why."""
    with transaction.atomic():
        # Locked so two revocations cannot both pass the check and write two audit rows.
        row = ApiToken.objects.select_for_update().select_related("user").get(pk=token.pk)
        if row.revoked_at is not None:
            raise ServiceError("token_revoked", f"The token {row.prefix} was already revoked.", 409)
        row.revoked_at = timezone.now()
        row.save(update_fields=["revoked_at"])
        AuditLog.record(
            actor=actor,
            action="api_token.revoke",
            target=row,
            reason=reason,
            prefix=row.prefix,
            name=row.name,
            user=row.user.username,
            scopes=row.scopes,
            expires_at=row.expires_at.isoformat() if row.expires_at else None,
            **_via(via),
        )
    token.revoked_at = row.revoked_at
    return row


def _article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


def _via(token: ApiToken | None) -> dict[str, str]:
    return {"via_token": token.prefix} if token is not None else {}

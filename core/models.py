"""What every app shares: API tokens for CI and scripts, and the audit log."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models
from django.utils import timezone

from core import tokens


class ApiToken(models.Model):
    """A token for CI and scripts, with scopes; only the hash is kept."""

    # ``admin`` lets a token manage API tokens (/api/v1/tokens/); only a staff user's token may hold it.
    SCOPES = ("read", "fleet", "publish", "rollout", "admin")

    name = models.CharField(max_length=100)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens")
    key_hash = models.CharField(max_length=64, unique=True)
    prefix = models.CharField(max_length=12)
    scopes = models.JSONField(default=list)
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["name"]
        db_table = "core_apitoken"

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    def clean(self) -> None:
        unknown = set(self.scopes) - set(self.SCOPES)
        if not isinstance(self.scopes, list) or unknown:
            raise ValidationError({"scopes": f"Unknown scopes: {', '.join(sorted(unknown))}."})

    @classmethod
    def issue(cls, user: Any, name: str, scopes: list[str], expires_at: datetime | None = None) -> tuple[ApiToken, str]:
        """A new token and its secret; the secret exists only in the return value."""
        key = tokens.new_secret("eft")
        row = cls(
            name=name,
            user=user,
            key_hash=tokens.digest(key),
            prefix=key[:10],
            scopes=list(scopes),
            expires_at=expires_at,
        )
        row.full_clean()
        row.save()
        return row, key

    def is_usable(self) -> bool:
        now = timezone.now()
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > now)


class AuditLog(models.Model):
    """Who did what, when and why. Rows are only ever added."""

    actor = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    actor_label = models.CharField(max_length=200)
    action = models.CharField(max_length=64)
    target_type = models.CharField(max_length=64)
    target_id = models.CharField(max_length=64)
    reason = models.TextField(blank=True)
    data = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-created_at"]
        db_table = "core_auditlog"
        # The audit page's filters, each newest first (dashboard/audit.py). ``action`` is also
        # matched by prefix ("rollout." for every rollout action): varchar_pattern_ops serves
        # both that and equality whatever the database's collation. SQLite ignores opclasses.
        indexes = [
            models.Index(
                fields=["action", "created_at"],
                opclasses=["varchar_pattern_ops", "timestamptz_ops"],
                name="auditlog_action_created",
            ),
            models.Index(fields=["actor_label", "created_at"], name="auditlog_actor_created"),
            models.Index(fields=["target_type", "target_id", "created_at"], name="auditlog_target_created"),
        ]

    @classmethod
    def record(cls, *, actor: Any, action: str, target: models.Model, reason: str = "", **data: Any) -> AuditLog:
        entry = cls.entry(actor=actor, action=action, target=target, reason=reason, **data)
        entry.save()
        return entry

    @classmethod
    def entry(cls, *, actor: Any, action: str, target: models.Model, reason: str = "", **data: Any) -> AuditLog:
        """An unsaved entry, for ``bulk_create`` when one action touches many rows."""
        user = actor if getattr(actor, "is_authenticated", False) else None
        label = getattr(actor, "username", None) or (str(actor) if actor else "system")
        return cls(
            actor=user,
            actor_label=label,
            action=action,
            target_type=target._meta.label_lower,
            # A device is known by its device id; anything else (an escalation that points at a device too) by its key.
            target_id=str(target.device_id if target._meta.label_lower == "fleet.device" else target.pk),  # type: ignore[attr-defined]
            reason=reason,
            data=data,
        )


class Role(models.Model):
    """What a user may do: ``admin`` everything, ``operator`` act on their sites, ``viewer`` read.

    A user without a row is an admin when staff and a viewer otherwise; a superuser is
    always an admin. An operator's sites are ``fleet.Site.operators``.
    """

    ADMIN = "admin"
    OPERATOR = "operator"
    VIEWER = "viewer"
    KINDS = ((ADMIN, "Admin"), (OPERATOR, "Operator"), (VIEWER, "Viewer"))

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="role")
    kind = models.CharField(max_length=16, choices=KINDS)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        db_table = "core_role"

    def __str__(self) -> str:
        return f"{self.user} ({self.kind})"

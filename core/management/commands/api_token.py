"""``manage.py api_token create|list|revoke``: API tokens for CI and scripts (docs/ci.md)."""

from __future__ import annotations

import getpass
from datetime import datetime, timedelta
from typing import Any

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from core import services
from core.errors import ServiceError
from core.models import ApiToken


def _when(value: datetime | None) -> str:
    return value.isoformat(timespec="seconds") if value else "-"


def find_token(ref: str) -> ApiToken:
    """A token by its id or its prefix (``eft_AbC123``)."""
    query = ApiToken.objects.select_related("user")
    rows = list((query.filter(pk=int(ref)) if ref.isdigit() else query.filter(prefix=ref))[:2])
    if not rows:
        raise CommandError(f"No API token with id or prefix {ref}.")
    if len(rows) > 1:
        raise CommandError(f"More than one token has the prefix {ref}; use its id.")
    return rows[0]


class Command(BaseCommand):
    help = "Create, list or revoke API tokens. create prints the secret once, alone on stdout."

    def add_arguments(self, parser: CommandParser) -> None:
        actions = parser.add_subparsers(dest="action", required=True)
        create = actions.add_parser("create", help="issue a token; its secret is printed once and never stored")
        create.add_argument("--user", required=True, help="the username the token acts as")
        create.add_argument("--name", required=True, help="what the token is for, e.g. 'vision CI'")
        create.add_argument(
            "--scope",
            dest="scopes",
            action="append",
            required=True,
            choices=ApiToken.SCOPES,
            help="repeatable: one of %(choices)s",
        )
        expiry = create.add_mutually_exclusive_group()
        expiry.add_argument("--expires-in-days", type=int, default=None, help="expire this many days from now")
        expiry.add_argument("--expires-at", default=None, help="ISO 8601 date-time with zone, e.g. 2027-01-31T00:00Z")
        listing = actions.add_parser("list", help="prefix, name, user, scopes, created, expires, last used, revoked")
        listing.add_argument("--user", default=None, help="only this user's tokens")
        revoke = actions.add_parser("revoke", help="refuse a token from now on")
        revoke.add_argument("token", help="the token's id or prefix (eft_ and six characters)")
        revoke.add_argument("--reason", required=True, help="why, for the audit log")

    def handle(self, *args: Any, **options: Any) -> None:
        actor = f"manage.py api_token ({getpass.getuser()})"
        try:
            if options["action"] == "create":
                self.create(actor, options)
            elif options["action"] == "list":
                self.list_tokens(options["user"])
            else:
                token = find_token(options["token"])
                services.revoke_token(token, actor=actor, reason=options["reason"])
                self.stderr.write(f"revoked {token.prefix} ({token.name}, user {token.user.username})")
        except ServiceError as exc:
            raise CommandError(exc.detail) from None
        except ValidationError as exc:
            problems = [f"{field}: {' '.join(found)}" for field, found in exc.message_dict.items()]
            raise CommandError(" ".join(problems)) from None

    def create(self, actor: str, options: dict[str, Any]) -> None:
        user = get_user_model().objects.filter(username=options["user"]).first()
        if user is None:
            raise CommandError(f"No user {options['user']!r}.")
        expires_at = None
        if options["expires_in_days"] is not None:
            if options["expires_in_days"] < 1:
                raise CommandError("--expires-in-days must be at least 1.")
            expires_at = timezone.now() + timedelta(days=options["expires_in_days"])
        elif options["expires_at"]:
            expires_at = parse_datetime(options["expires_at"])
            if expires_at is None or expires_at.tzinfo is None:
                raise CommandError("--expires-at must be an ISO 8601 date-time with a zone, e.g. 2027-01-31T00:00Z.")
        token, secret = services.issue_token(
            actor=actor, user=user, name=options["name"], scopes=options["scopes"], expires_at=expires_at
        )
        # The details go to stderr so `TOKEN=$(manage.py api_token create ...)` captures the secret alone.
        self.stderr.write(
            f"created {token.prefix} ({token.name}) for {user.username}, scopes {','.join(token.scopes)}, "
            f"expires {_when(token.expires_at)}; the secret below is shown only now"
        )
        self.stdout.write(secret)

    def list_tokens(self, username: str | None) -> None:
        rows = ApiToken.objects.select_related("user").order_by("created_at", "id")
        if username:
            rows = rows.filter(user__username=username)
        header = ("id", "prefix", "name", "user", "scopes", "created", "expires", "last used", "revoked")
        self.stdout.write("\t".join(header))
        for token in rows:
            fields = (
                str(token.pk),
                token.prefix,
                token.name,
                token.user.username,
                ",".join(token.scopes),
                _when(token.created_at),
                _when(token.expires_at),
                _when(token.last_used_at),
                _when(token.revoked_at),
            )
            self.stdout.write("\t".join(fields))

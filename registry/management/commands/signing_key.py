"""``manage.py signing_key create|list|rotate|retire``: the registry's Ed25519 keys."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from registry import services
from registry.models import SigningKey


class Command(BaseCommand):
    help = "Create, list, rotate or retire bundle signing keys (private keys stay in REGISTRY_KEY_DIR)."

    def add_arguments(self, parser: CommandParser) -> None:
        actions = parser.add_subparsers(dest="action", required=True)
        actions.add_parser("create", help="create a signing key (the first one, or an extra one)")
        actions.add_parser("list", help="list keys: id, created, retired, whether the private key file is here")
        rotate = actions.add_parser("rotate", help="new key, announced in a keyring update signed by the current key")
        rotate.add_argument(
            "--retire-old-after-days",
            type=float,
            default=None,
            help="retire the previous key this many days from now (default: keep it)",
        )
        retire = actions.add_parser("retire", help="refuse signatures by a key from a date on")
        retire.add_argument("key_id")
        retire.add_argument("--at", default=None, help="ISO 8601 date-time with zone (default: now)")

    def handle(self, *args: Any, **options: Any) -> None:
        action = options["action"]
        if action == "create":
            key = SigningKey.generate()
            self.stdout.write(f"created {key.key_id} (private key {key.private_key_path}, mode 0600)")
        elif action == "list":
            for key in SigningKey.objects.all():
                retired = key.retired_at.isoformat() if key.retired_at else "-"
                here = "yes" if key.private_key_path.exists() else "no"
                self.stdout.write(
                    f"{key.key_id}  created {key.created_at.isoformat()}  retired {retired}  private key here: {here}"
                )
        elif action == "rotate":
            days = options["retire_old_after_days"]
            if days is not None and days < 0:
                raise CommandError("--retire-old-after-days must not be negative.")
            after = timedelta(days=days) if days is not None else None
            new, update = services.rotate_signing_key(retire_old_after=after)
            self.stdout.write(f"created {new.key_id}; keyring update {update.sequence} signed by {update.signed_by}")
        elif action == "retire":
            retiring = SigningKey.objects.filter(key_id=options["key_id"]).first()
            if retiring is None:
                raise CommandError(f"No signing key {options['key_id']!r}.")
            at = timezone.now()
            if options["at"]:
                parsed = parse_datetime(options["at"])
                if parsed is None or parsed.tzinfo is None:
                    raise CommandError(f"--at {options['at']!r} is not an ISO 8601 date-time with a zone.")
                at = parsed
            retired_update = services.retire_signing_key(retiring, at=at)
            note = (
                f"; keyring update {retired_update.sequence} signed by {retired_update.signed_by}"
                if retired_update
                else ("; no other usable key signed a keyring update: create one")
            )
            self.stdout.write(f"{retiring.key_id} retired at {at.isoformat()}{note}")

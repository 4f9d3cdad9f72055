"""``manage.py set_role <user> admin|operator|viewer [--site slug ...]``: give a person their role (docs/dashboard.md).

Run by the host's administrator, so it acts as the system; the change is audited like the users page's.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from core.errors import ServiceError
from core.models import Role
from fleet import access
from fleet.models import Site


class Command(BaseCommand):
    help = "Set a user's dashboard and API role; an operator names the sites they act on."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username")
        parser.add_argument("role", choices=[kind for kind, _ in Role.KINDS])
        parser.add_argument("--site", action="append", default=[], help="a site the operator acts on (repeat)")
        parser.add_argument("--reason", default="", help="why, for the audit log")

    def handle(self, *args: Any, **options: Any) -> None:
        user = get_user_model().objects.filter(username=options["username"]).first()
        if user is None:
            raise CommandError(f"No user {options['username']!r}.")
        slugs = list(dict.fromkeys(options["site"]))
        sites = list(Site.objects.filter(slug__in=slugs))
        missing = sorted(set(slugs) - {site.slug for site in sites})
        if missing:
            raise CommandError(f"No site {', '.join(missing)}.")
        if slugs and options["role"] != Role.OPERATOR:
            raise CommandError("Only an operator has sites; an admin acts everywhere and a viewer nowhere.")
        try:
            access.set_role(actor=None, user=user, kind=options["role"], sites=sites, reason=options["reason"])
        except ServiceError as refused:
            raise CommandError(refused.detail) from None
        where = f" of {', '.join(sorted(slugs))}" if slugs else ""
        self.stdout.write(f"{user.username} is now {options['role']}{where}.")

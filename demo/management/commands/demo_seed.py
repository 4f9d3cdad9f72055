from __future__ import annotations

import json
import secrets
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand

from core import services
from core.models import ApiToken
from fleet.models import Device, EnrollmentToken, Site


class Command(BaseCommand):
    help = "Prepare the demo: an admin account, sites, and enrollment tokens for devices not yet enrolled."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--site", action="append", default=[], help="slug:Name:device,device,... (or no devices)")
        parser.add_argument(
            "--sim-token",
            action="store_true",
            help="also issue a token with the fleet scope only, for the simulator to enroll its devices",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        password = secrets.token_urlsafe(12)
        user, _ = get_user_model().objects.get_or_create(username="admin", defaults={"email": "admin@localhost"})
        user.is_staff = user.is_superuser = True
        user.set_password(password)
        user.save()
        api_token = self.fresh_token(user, "demo", ["read", "fleet", "publish", "rollout"])
        tokens: dict[str, dict[str, str]] = {}
        for spec in options["site"]:
            slug, name, names = spec.split(":", 2)
            site, _ = Site.objects.get_or_create(slug=slug, defaults={"name": name})
            enrolled = set(Device.objects.filter(site=site, revoked_at__isnull=True).values_list("name", flat=True))
            tokens[slug] = {}
            for device in filter(None, names.split(",")):
                if device not in enrolled:
                    _, token = EnrollmentToken.issue(site, note=f"demo {device}")
                    tokens[slug][device] = token
        seed = {"username": user.username, "password": password, "api_token": api_token, "tokens": tokens}
        if options["sim_token"]:
            seed["sim_token"] = self.fresh_token(user, "demo-sim", ["fleet"])
        self.stdout.write(json.dumps(seed))

    def fresh_token(self, user: Any, name: str, scopes: list[str]) -> str:
        """A fresh token each run, so the one handed out always works; the previous runs' are revoked."""
        for old in ApiToken.objects.filter(user=user, name=name, revoked_at__isnull=True):
            services.revoke_token(old, actor=None, reason="a new demo run issues a fresh token")
        _, token = services.issue_token(actor=None, user=user, name=name, scopes=scopes)
        return str(token)

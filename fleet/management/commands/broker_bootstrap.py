"""`manage.py broker_bootstrap`: put Mosquitto's dynamic security in step with the control plane.

Safe to run again at any time (after a deploy, from a cron job). It:

1. creates or updates the bridge's role and client from MQTT_USERNAME and
   MQTT_PASSWORD (re-running it after changing the password rotates it);
2. deletes the broker clients of revoked devices and of device ids the
   database does not know (left by an enrollment whose transaction rolled
   back after the broker took the credentials);
3. binds every enrolled device's client to client id = device id where it
   is not yet (clients created before the binding existed);
4. lists enrolled devices the broker has no client for. Their secrets are
   stored hashed, so they cannot be re-created from the database: such a
   device must be re-enrolled (or given a new secret) before it can connect.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from fleet.broker import BrokerUnavailable
from fleet.broker.dynsec import DynsecProvisioner
from fleet.models import Device


class Command(BaseCommand):
    help = "Create the bridge account in Mosquitto's dynamic security and remove devices the control plane revoked."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--dry-run", action="store_true", help="Report what would change; change nothing")
        parser.add_argument(
            "--no-bridge", action="store_true", help="Leave the bridge account alone (it is managed elsewhere)"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if not settings.BROKER_ADMIN_PASSWORD:
            raise CommandError("BROKER_ADMIN_PASSWORD (or BROKER_ADMIN_PASSWORD_FILE) must be set.")
        dry_run: bool = options["dry_run"]
        admin = DynsecProvisioner.from_settings()
        try:
            if not options["no_bridge"]:
                self._bridge(admin, dry_run)
            self._devices(admin, dry_run)
        except BrokerUnavailable as exc:
            raise CommandError(str(exc)) from exc

    def _bridge(self, admin: DynsecProvisioner, dry_run: bool) -> None:
        username, password = settings.MQTT_USERNAME, settings.MQTT_PASSWORD
        if not username or not password:
            raise CommandError("MQTT_USERNAME and MQTT_PASSWORD (or MQTT_PASSWORD_FILE) name the bridge account.")
        if not dry_run:
            admin.ensure_bridge(username, password)
        self.stdout.write(f"bridge account {username!r}: {'would be ' if dry_run else ''}created or updated")

    def _devices(self, admin: DynsecProvisioner, dry_run: bool) -> None:
        at_broker = admin.device_clients()
        active = set(Device.objects.filter(revoked_at__isnull=True).values_list("device_id", flat=True))
        stale = sorted(at_broker - active)
        missing = sorted(active - at_broker)
        for device_id in stale:
            if dry_run:
                self.stdout.write(f"would remove {device_id}")
                continue
            admin.remove_device(device_id)
            self.stdout.write(f"removed {device_id} (revoked or unknown)")
        unbound = sorted(admin.unbound_device_clients() & active)
        if unbound and not dry_run:
            admin.bind_devices(unbound)
        for device_id in unbound:
            self.stdout.write(f"{'would bind' if dry_run else 'bound'} {device_id} to its own client id")
        for device_id in missing:
            self.stderr.write(
                f"{device_id} is enrolled but has no broker account: its secret cannot be rebuilt from the "
                "database; re-enroll the device"
            )
        self.stdout.write(
            f"devices: {len(active & at_broker)} in step, {len(stale)} {'to remove' if dry_run else 'removed'}, "
            f"{len(missing)} need re-enrollment"
        )

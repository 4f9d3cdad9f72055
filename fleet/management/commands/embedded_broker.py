"""`manage.py embedded_broker`: the demo's MQTT broker, authenticating against the database."""

from __future__ import annotations

import asyncio
import signal
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError

from fleet.broker.embedded import EmbeddedBroker, EmbeddedBrokerConfig


def _default_bind() -> str:
    parts = urlsplit(settings.MQTT_URL)
    return f"{parts.hostname or '127.0.0.1'}:{parts.port or 1883}"


class Command(BaseCommand):
    help = "Run the embedded MQTT broker (amqtt): devices log in with their enrolled credentials."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--bind", help="HOST:PORT to listen on (default: the host and port of MQTT_URL)")

    def handle(self, *args: Any, **options: Any) -> None:
        bind = options["bind"] or _default_bind()
        host, _, port = bind.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise CommandError(f"--bind {bind!r} is not HOST:PORT")
        try:
            config = EmbeddedBrokerConfig.from_settings(bind)
        except ImproperlyConfigured as exc:
            raise CommandError(str(exc)) from exc
        if not config.bridge_username:
            self.stderr.write("MQTT_USERNAME is not set: no bridge account, only devices can connect")
        asyncio.run(self._serve(config))
        self.stdout.write("embedded MQTT broker stopped")

    async def _serve(self, config: EmbeddedBrokerConfig) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        broker = EmbeddedBroker(config)
        self.stdout.write(f"embedded MQTT broker starting on {config.bind}")
        self.stdout.flush()
        await broker.serve(stop)

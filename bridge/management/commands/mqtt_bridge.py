from __future__ import annotations

import signal
import threading
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand

from bridge import metrics
from bridge.process import Bridge, BridgeConfig, run_forever
from core.metrics import serve_probes


class Command(BaseCommand):
    help = "Run the MQTT bridge: store device messages, publish desired state and acknowledgements."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--url", help="Broker URL (default: MQTT_URL)")
        parser.add_argument("--shared-group", help="Shared subscription group; '' to subscribe directly")

    def handle(self, *args: Any, **options: Any) -> None:
        overrides: dict[str, Any] = {}
        if options["url"]:
            overrides["url"] = options["url"]
        if options["shared_group"] is not None:
            overrides["shared_group"] = options["shared_group"] or None
        config = BridgeConfig.from_settings(**overrides)
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        self.stdout.write(f"mqtt bridge connecting to {config.url}")
        bridge = run_forever(config, stop, on_start=_serve_probes if settings.PROBE_PORT else None)
        self.stdout.write(f"mqtt bridge stopped; accepted={dict(bridge.accepted)} rejected={dict(bridge.rejected)}")


def _serve_probes(bridge: Bridge) -> None:
    serve_probes(
        settings.PROBE_ADDRESS,
        settings.PROBE_PORT,
        live=lambda: metrics.liveness(bridge),
        ready=lambda: metrics.readiness(bridge),
        collectors=[metrics.BridgeCollector(bridge)],
    )

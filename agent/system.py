"""Facts about the device for heartbeats: load, memory, disk, temperature, clock.

Each fact the platform does not expose (no thermal sensors in a container, no
CPU clock on some ARM kernels) is None rather than a guess.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import psutil

from agent import __version__
from agent.kernel import protocol

log = logging.getLogger(__name__)

# Sensor groups that report the SoC or CPU package, most specific first.
_CPU_SENSORS = ("cpu_thermal", "coretemp", "k10temp", "zenpower", "soc_thermal", "cpu-thermal", "acpitz")

_STARTED = time.monotonic()


def temperature_c() -> float | None:
    """The hottest CPU/SoC sensor in degrees Celsius, or None where none is exposed."""
    reader = getattr(psutil, "sensors_temperatures", None)
    if reader is None:
        return None
    try:
        groups: dict[str, list[Any]] = reader()
    except (OSError, RuntimeError) as exc:
        log.debug("temperature sensors unreadable", extra={"error": str(exc)})
        return None
    for name in (*_CPU_SENSORS, *sorted(groups)):
        readings = [r.current for r in groups.get(name, []) if r.current is not None and -50 < r.current < 200]
        if readings:
            return float(max(readings))
    return None


def cpu_freq_mhz() -> float | None:
    try:
        freq = psutil.cpu_freq()
    except (OSError, RuntimeError, NotImplementedError) as exc:
        log.debug("CPU clock unreadable", extra={"error": str(exc)})
        return None
    if freq is None or not freq.current:
        return None
    return float(freq.current)


def heartbeat(
    data_dir: Path, *, outbox_depth: int = 0, model_version: str | None = None, **extra: Any
) -> protocol.Heartbeat:
    """Measure the device now; ``extra`` adds fields the protocol allows beside the standard ones."""
    disk = psutil.disk_usage(str(data_dir))
    facts: dict[str, Any] = {
        "agent_version": __version__,
        "uptime_s": round(time.monotonic() - _STARTED, 3),
        # Since the previous call: the first one reads 0.0, every later one the load between heartbeats.
        "cpu_percent": psutil.cpu_percent(interval=None),
        "memory_percent": psutil.virtual_memory().percent,
        "disk_percent": disk.percent,
        "disk_free_bytes": disk.free,
        "temperature_c": temperature_c(),
        "cpu_freq_mhz": cpu_freq_mhz(),
        "model_version": model_version,
        "outbox_depth": outbox_depth,
        "system_uptime_s": round(max(0.0, time.time() - psutil.boot_time()), 3),
    }
    return protocol.Heartbeat.model_validate({**facts, **extra})

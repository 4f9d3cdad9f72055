"""The fallback model shipped with the agent: it always loads, so a device is never without a model.

``model.onnx`` is a two-class brightness classifier (``dark`` / ``bright``)
with deliberately low confidence (at most about 0.73): while it serves, every
frame falls below its escalation threshold, so the cloud model sees what the
device cannot judge. The device reports ``fallback=true`` meanwhile.
"""

from __future__ import annotations

from pathlib import Path

METADATA = Path(__file__).with_name("fallback.json")

"""The project's own vision models: a frame renderer, sample sets, and the training that produces the ONNX files.

`render` and `samples` need only numpy and Pillow, so the demo and the tests can
draw frames at run time; `train` needs torch (the `train` extra) and is run
offline to rebuild `zoo/onnx/`.
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent
ONNX_DIR = HERE / "onnx"


def onnx_path(name: str) -> Path:
    """The committed ONNX file of one of the project's models, e.g. ``parts-classifier``."""
    return ONNX_DIR / f"{name}.onnx"


def metadata_path(name: str) -> Path:
    """The publish metadata that goes with ``onnx_path(name)``."""
    return HERE / f"{name}.json"

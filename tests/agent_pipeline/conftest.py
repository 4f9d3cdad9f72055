"""Fixtures for the agent's frame pipeline: tiny ONNX graphs, in-memory sources, a recording HTTP server."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

onnx = pytest.importorskip("onnx", reason="the onnx package (dev extra) builds the test graphs")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from agent.kernel.spec import ClassificationOutput, DetectionOutput, InputSpec  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def _save(graph: Any, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8  # readable by every onnxruntime this project supports
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def make_classifier(path: Path, weights: np.ndarray, size: int = 16) -> Path:
    """logits = mean colour of the image (per channel) @ ``weights`` (3 x classes)."""
    image = helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, size, size])
    logits = helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, weights.shape[1]])
    nodes = [
        helper.make_node("ReduceMean", ["image"], ["pooled"], axes=[2, 3], keepdims=0),
        helper.make_node("MatMul", ["pooled", "w"], ["logits"]),
    ]
    w = numpy_helper.from_array(weights.astype(np.float32), "w")
    return _save(helper.make_graph(nodes, "classifier", [image], [logits], [w]), path)


def make_detector(path: Path, rows: np.ndarray, size: int = 64) -> Path:
    """Always answers ``rows`` (boxes x (5 + classes)), whatever the image."""
    image = helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, size, size])
    out = helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [1, *rows.shape])
    nodes = [
        helper.make_node("ReduceSum", ["image"], ["total"], keepdims=0),
        helper.make_node("Mul", ["total", "zero"], ["nothing"]),
        helper.make_node("Add", ["rows", "nothing"], ["boxes"]),
    ]
    inits = [
        numpy_helper.from_array(rows[None].astype(np.float32), "rows"),
        numpy_helper.from_array(np.array(0.0, dtype=np.float32), "zero"),
    ]
    return _save(helper.make_graph(nodes, "detector", [image], [out], inits), path)


# One class per colour channel (of the RGB tensor): a frame's dominant colour is its label.
COLOUR_LABELS = ["red", "green", "blue"]


@pytest.fixture
def colour_model(tmp_path: Path) -> Any:
    from agent.inference import ModelSession

    path = make_classifier(tmp_path / "colour.onnx", np.eye(3, dtype=np.float32) * 10.0)
    return ModelSession(
        path,
        InputSpec(name="image", shape=[1, 3, 16, 16], mean=[0.0], std=[1.0]),
        ClassificationOutput(output="logits", softmax=True, top_k=3),
        COLOUR_LABELS,
        name="colour",
        version="1.0.0",
        settings=None,
    )


def solid(bgr: tuple[int, int, int], height: int = 48, width: int = 64) -> np.ndarray:
    frame = np.empty((height, width, 3), dtype=np.uint8)
    frame[:] = bgr
    return frame


RED, GREEN, BLUE = (0, 0, 255), (0, 255, 0), (255, 0, 0)  # BGR, as OpenCV holds frames


class ListSource:
    """An in-memory FrameSource; ``gates[i]`` (an event) must be set before frame ``i`` is read."""

    live = False

    def __init__(self, images: Sequence[np.ndarray], gates: dict[int, threading.Event] | None = None) -> None:
        self.name = "list"
        self._images = list(images)
        self._gates = gates or {}
        self._next = 0
        self.closed = False

    def read(self) -> tuple[np.ndarray, str] | None:
        if self._next >= len(self._images):
            return None
        gate = self._gates.get(self._next)
        if gate is not None and not gate.wait(10):
            raise AssertionError(f"gate for frame {self._next} never opened")
        image = self._images[self._next]
        self._next += 1
        return image, f"f{self._next}"

    def close(self) -> None:
        self.closed = True


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class RecordingServer:
    """A local HTTP server that records requests and answers ``status`` (settable while it runs)."""

    url: str = ""
    status: int = 200
    requests: list[Recorded] = field(default_factory=list)
    arrived: threading.Condition = field(default_factory=threading.Condition)

    def wait_for(self, count: int, timeout: float = 10.0) -> bool:
        with self.arrived:
            return self.arrived.wait_for(lambda: len(self.requests) >= count, timeout)


@pytest.fixture
def http_server() -> Iterator[RecordingServer]:
    state = RecordingServer()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            status = state.status
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(json.dumps({"status": status}).encode())
            with state.arrived:
                state.requests.append(Recorded("POST", self.path, dict(self.headers.items()), body))
                state.arrived.notify_all()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()


def detection_output(**overrides: Any) -> DetectionOutput:
    return DetectionOutput(output="boxes", **overrides)

"""Fixtures of the agent tests: its run time against a real bridge, pipeline models drawn in code, and signed
bundles served to the updater."""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import onnx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from onnx import TensorProto, helper, numpy_helper

from agent import config as agent_config
from agent.kernel import protocol
from agent.kernel.manifest import canonical_bytes
from agent.kernel.spec import ClassificationOutput, DetectionOutput, InputSpec
from agent.kernel.verify import signed_desired
from bridge.process import Bridge
from fleet.models import Device, Site
from registry.bundles import Signer
from tests.agent.helpers import RecordingRuntime, desired_doc, make_agent_config  # noqa: F401 - the tests import them from here
from tests.brokers import clear_retained
from tests.registry.conftest import Crafted, make_classifier, make_png_images, trusted

AGENT = Path(sys.executable).with_name("edgefleet-agent")


class AgentProcess:
    def __init__(self, config: Path, log: Path, **extra_env: str) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFLEET_AGENT_")}
        env.update(extra_env)
        self.log_path = log
        self._log: TextIO = log.open("w")
        self.proc = subprocess.Popen(
            [str(AGENT), "run", "--config", str(config)], stdout=self._log, stderr=subprocess.STDOUT, env=env
        )

    def log(self) -> str:
        return self.log_path.read_text()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=30)
        self._log.close()


@pytest.fixture
def device(enroll_device: Callable[..., Any], mqtt_url: str) -> Iterator[tuple[Device, str]]:
    site = Site.objects.create(slug="plant-a", name="Plant A")
    enrollment = enroll_device(site, name="cam-1")
    yield enrollment.device, enrollment.secret
    clear_retained(mqtt_url, enrollment.device.device_id)


def wait_until(predicate: Callable[[], bool], bridge: Bridge, timeout: float = 30) -> bool:
    """Re-check ``predicate`` whenever the bridge handles a message (heartbeats arrive every second)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        bridge.wait_for(lambda _b: predicate(), timeout=0.1)
    return predicate()


def _save(graph: Any, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8  # readable by every onnxruntime this project supports
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def make_colour_classifier(path: Path, weights: np.ndarray, size: int = 16) -> Path:
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

    path = make_colour_classifier(tmp_path / "colour.onnx", np.eye(3, dtype=np.float32) * 10.0)
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


@pytest.fixture(scope="session")
def classifier_onnx() -> bytes:
    return make_classifier()


@pytest.fixture(scope="session")
def signer() -> Signer:
    return Signer(Ed25519PrivateKey.generate())


@pytest.fixture
def png_images() -> list[bytes]:
    return make_png_images()


@pytest.fixture
def crafted(classifier_onnx: bytes) -> Crafted:
    return Crafted(classifier_onnx)


class BundleServer:
    """Serves bundles as the control plane does (ETag, Content-Length, Range) and records each request."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.requests: list[tuple[str, str | None]] = []
        self.cut_after: int | None = None
        """When set, a whole-file answer stops after this many bytes (a dropped connection)."""
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                outer.requests.append((self.path, self.headers.get("Range")))
                data = outer.files.get(self.path)
                if data is None:
                    self.send_error(404)
                    return
                start, code = 0, 200
                wanted = self.headers.get("Range")
                etag = f'"{hashlib.sha256(data).hexdigest()}"'
                if wanted and self.headers.get("If-Range", etag) == etag:
                    start, code = int(wanted.split("=")[1].split("-")[0]), 206
                body = data[start:]
                self.send_response(code)
                self.send_header("ETag", etag)
                self.send_header("Content-Length", str(len(body)))
                if code == 206:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.end_headers()
                if outer.cut_after is not None and code == 200:
                    self.wfile.write(body[: outer.cut_after])
                    outer.cut_after = None
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()

    def add(self, name: str, archive: bytes) -> str:
        path = f"/bundles/{name}"
        self.files[path] = archive
        return path

    def downloads(self, path: str) -> int:
        return sum(1 for p, _ in self.requests if p == path)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def bundle_server() -> Iterator[BundleServer]:
    server = BundleServer()
    yield server
    server.close()


@pytest.fixture
def agent_config_factory(tmp_path: Path) -> Callable[..., agent_config.AgentConfig]:
    """``make_agent_config`` with the test's own data dir (``tmp_path / "data"``)."""

    def make(**kwargs: Any) -> agent_config.AgentConfig:
        return make_agent_config(tmp_path / "data", **kwargs)

    return make


@pytest.fixture
def config(
    agent_config_factory: Callable[..., agent_config.AgentConfig], bundle_server: BundleServer, signer: Signer
) -> agent_config.AgentConfig:
    return agent_config_factory(server_url=bundle_server.url, trust=[trusted(signer)])


def desired_for(
    bundle: Crafted, archive: bytes, url: str, key: Signer, generation: int, **model: Any
) -> protocol.Desired:
    """A signed desired document naming ``bundle``'s manifest, served as ``archive`` at ``url``."""
    manifest = bundle.manifest()
    fields: dict[str, Any] = {
        "name": manifest.model,
        "version": manifest.version,
        "sequence": manifest.sequence,
        "target": "cpu-fp32",
        "bundle_url": url,
        "sha256": hashlib.sha256(archive).hexdigest(),
        "size": len(archive),
        "manifest_sha256": hashlib.sha256(canonical_bytes(manifest)).hexdigest(),
    }
    fields.update(model)
    return sign(desired_doc(generation, model=fields), key)


def sign(desired: protocol.Desired, key: Signer) -> protocol.Desired:
    return signed_desired(desired, key.sign)


def publish(bundle: Crafted, key: Signer, server: BundleServer, tmp_path: Path, generation: int) -> protocol.Desired:
    """Pack ``bundle`` as it is now, serve it, and return the signed desired document naming it."""
    folder = tmp_path / f"pack-{generation}"
    folder.mkdir()
    archive = bundle.pack(key, folder).read_bytes()
    url = server.add(f"{bundle.fields['version']}-{generation}.tar.gz", archive)
    return desired_for(bundle, archive, url, key, generation)


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[socket.socket]:
    """Where agents send their sd_notify messages, as systemd would receive them."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify.sock"))
    sock.settimeout(90)
    yield sock
    sock.close()


def serve_rotated_keyring(bundle_server: BundleServer, signer: Signer) -> Signer:
    """A new signing key, vouched for by ``signer`` in a keyring update the bundle server hands out."""
    rotated = Signer(Ed25519PrivateKey.generate())
    document = {
        "type": "keyring",
        "sequence": 1,
        "issued_at": datetime.now(timezone.utc).isoformat(),
        "keys": [trusted(signer), trusted(rotated)],
    }
    update = {"document": document, "signature": signer.sign_document(document)}
    bundle_server.files["/api/v1/keyring"] = json.dumps({"trust_store": [], "update": update}).encode()
    return rotated

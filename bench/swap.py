"""A model update on a running pipeline: what it costs beside the download, and what inference loses.

One run: a signed bundle (a MobileNet-sized classifier, about 5 MB of weights, with three
reference cases) is served over HTTP with Range/ETag as the control plane serves it; the
updater downloads it, verifies it (signature, digests, limits), validates it (load + reference
outputs), installs it atomically and swaps it under a pipeline that decides frames all along.

Printed, as one JSON line:

* ``download_s`` over loopback, and ``download_s_10mbit`` (the same bytes at 10 Mbit/s, a
  modest site uplink), and the time of verify + validate + install + swap (``stage_swap_s``),
  with both ratios ``stage_swap_per_download``;
* frames decided during the update, frames that failed (``frames_lost``: none may), and the
  longest gap between two decided frames against the median gap (inference pauses at most one frame).

    .venv/bin/python -m bench.swap
    .venv/bin/python -m bench.swap --weights 4000000 --frames-fps 200
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import http.server
import io
import itertools
import json
import statistics
import sys
import tempfile
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np

from agent import config as agent_config
from agent.desired import DesiredState
from agent.kernel import protocol
from agent.kernel.manifest import FileEntry, Manifest, ReferenceCase, canonical_bytes
from agent.kernel.verify import key_id_for, signed_desired
from agent.pipeline import Pipeline
from agent.trust import Trust
from agent.updater import Updater
from registry.bundles import Signer, build_bundle
from tests.agent.helpers import desired_doc, make_agent_config


def classifier(weights: int, seed: int) -> bytes:
    """224x224 RGB -> pooled colour -> dense 3 x hidden -> 1000 classes: ``weights`` floats in the last layer."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    hidden = max(8, weights // 1000)
    initializers = [
        numpy_helper.from_array(rng.normal(0, 1, (3, hidden)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.normal(0, 0.05, (hidden, 1000)).astype(np.float32), "w2"),
    ]
    nodes = [
        helper.make_node("GlobalAveragePool", ["input"], ["pool"]),
        helper.make_node("Flatten", ["pool"], ["flat"]),
        helper.make_node("MatMul", ["flat", "w1"], ["h"]),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("MatMul", ["r", "w2"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "swap-bench",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 224, 224])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 1000])],
        initializer=initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return bytes(model.SerializeToString())


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def bundle(model: bytes, version: str, sequence: int, signer: Signer) -> tuple[bytes, Manifest]:
    import onnxruntime as ort

    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    files = {"model.onnx": model}
    references = []
    rng = np.random.default_rng(sequence)
    for i in range(3):
        tensor = rng.normal(0, 1, (1, 3, 224, 224)).astype(np.float32)
        files[f"reference/{i}.input.npy"] = _npy(tensor)
        files[f"reference/{i}.output.npy"] = _npy(session.run(None, {"input": tensor})[0])
        references.append(ReferenceCase(input=f"reference/{i}.input.npy", expected=[f"reference/{i}.output.npy"]))
    now = datetime.now(timezone.utc)
    manifest = Manifest(
        model="bench",
        version=version,
        sequence=sequence,
        task="classification",
        files=[FileEntry(path=p, sha256=hashlib.sha256(d).hexdigest(), size=len(d)) for p, d in files.items()],
        input={"name": "input", "shape": [1, 3, 224, 224]},
        output={"kind": "classification", "output": "logits"},
        labels=[f"class-{i}" for i in range(1000)],
        references=references,
        created_at=now - timedelta(minutes=1),
        expires_at=now + timedelta(days=30),
    )
    archive, _ = build_bundle(manifest, files, signer)
    return archive, manifest


def serve(files: dict[str, bytes]) -> tuple[http.server.ThreadingHTTPServer, str]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            data = files[self.path]
            self.send_response(200)
            self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


class Frames:
    """A camera-like source: a fixed rate of 480x640 frames, until told to stop."""

    live = True
    name = "bench-camera"

    def __init__(self, fps: float) -> None:
        self.interval = 1.0 / fps
        self.index = 0
        self.stopped = threading.Event()
        self.image = np.random.default_rng(0).integers(0, 255, (480, 640, 3), dtype=np.uint8)

    def read(self) -> tuple[np.ndarray, str] | None:
        if self.stopped.wait(self.interval):
            return None
        self.index += 1
        return self.image, str(self.index)

    def close(self) -> None:
        self.stopped.set()


def desired(manifest: Manifest, archive: bytes, url: str, signer: Signer, generation: int) -> protocol.Desired:
    message = desired_doc(
        generation,
        device_id="bench",
        model={
            "name": manifest.model,
            "version": manifest.version,
            "sequence": manifest.sequence,
            "bundle_url": url,
            "sha256": hashlib.sha256(archive).hexdigest(),
            "size": len(archive),
            "manifest_sha256": hashlib.sha256(canonical_bytes(manifest)).hexdigest(),
        },
    )
    return signed_desired(message, signer.sign)


class Recorder:
    """The updater's runtime: notes when each phase is first reported."""

    def __init__(self, config: agent_config.AgentConfig) -> None:
        self.phases: list[tuple[str, float]] = []
        self.model_version: str | None = None
        self.reported_fields: dict[str, Any] = {}
        self.desired_state = DesiredState(config, Trust(config), self)

    def set_reported(self, **fields: Any) -> None:
        self.reported_fields.update(fields)
        self.report()

    def report(self, **fields: Any) -> None:
        phase = self.reported_fields.get("phase")
        if not self.phases or self.phases[-1][0] != phase:
            self.phases.append((str(phase), time.perf_counter()))

    def event(self, kind: str, **data: Any) -> None:
        pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.swap", description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", type=int, default=1_300_000, help="floats in the last layer (4 bytes each)")
    parser.add_argument("--frames-fps", type=float, default=100.0)
    args = parser.parse_args(argv)
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    signer = Signer(Ed25519PrivateKey.generate())
    first, first_manifest = bundle(classifier(args.weights, 1), "1.0.0", 1, signer)
    second, second_manifest = bundle(classifier(args.weights, 2), "1.1.0", 2, signer)
    server, base = serve({"/1.tar.gz": first, "/2.tar.gz": second})
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        public = base64.b64encode(signer.public_bytes).decode()
        trust = [{"key_id": key_id_for(signer.public_bytes), "public_key": public}]
        config = make_agent_config(data, server_url=base, device_id="bench", trust=trust)
        updater = Updater(config)
        recorder = Recorder(config)
        updater.start(recorder)
        updater.converge(desired(first_manifest, first, "/1.tar.gz", signer, 1))
        source = Frames(args.frames_fps)
        decided: list[float] = []
        pipeline = Pipeline(
            source,
            updater.holder,
            queue_size=2,
            telemetry=False,
            on_result=lambda frame, result: decided.append(time.perf_counter()),
        )
        pipeline.start()
        time.sleep(1.0)
        recorder.phases.clear()
        start = time.perf_counter()
        updater.converge(desired(second_manifest, second, "/2.tar.gz", signer, 2))
        end = time.perf_counter()
        time.sleep(0.5)
        source.close()
        pipeline.stop()
        updater.stop()
        server.shutdown()
    marks = dict(recorder.phases)
    download_s = marks["verifying"] - marks["downloading"]
    stage_swap_s = end - marks["verifying"]
    during = [t for t in decided if start <= t <= end + 0.05]
    gaps = [b - a for a, b in itertools.pairwise(decided)]
    swap_gaps = [b - a for a, b in itertools.pairwise(decided) if start <= b <= end + 0.05]
    # The gap that spans the swap itself (the session switch happens just before "active" is reported).
    swapped_at = marks["active"]
    at_swap = [b - a for a, b in itertools.pairwise(decided) if a <= swapped_at <= b]
    at_10mbit = len(second) * 8 / 10e6
    print(
        json.dumps(
            {
                "bundle_bytes": len(second),
                "download_s": round(download_s, 4),
                "download_s_10mbit": round(at_10mbit, 3),
                "verify_s": round(marks["validating"] - marks["verifying"], 4),
                "validate_install_swap_s": round(end - marks["validating"], 4),
                "stage_swap_s": round(stage_swap_s, 4),
                "stage_swap_per_download_loopback": round(stage_swap_s / download_s, 2),
                "stage_swap_per_download_10mbit": round(stage_swap_s / at_10mbit, 3),
                "frames_during_update": len(during),
                "frames_lost": pipeline.errors,
                "frames_dropped_by_queue": pipeline.queue.dropped,
                "median_gap_ms": round(statistics.median(gaps) * 1000, 2),
                "max_gap_during_update_ms": round(max(swap_gaps) * 1000, 2) if swap_gaps else None,
                "gap_at_swap_ms": round(at_swap[0] * 1000, 2) if at_swap else None,
                "served_by": updater.holder.session.version,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What the agent adds on top of onnxruntime, measured side by side in one run.

For each model: the per-frame p50 of the agent pipeline (pre-processing from
a camera-sized BGR frame, ``session.run``, decoding, window telemetry, the
action rules) divided by the p50 of the bare ``session.run`` on the same
frames' ready tensors, with the same thread count. The two are measured
interleaved, frame by frame, alternating which goes first, so drift in the
machine's speed hits both alike. Then frames/s of the threaded pipeline with
window telemetry on and off, in pairs of 60-frame blocks.

    .venv/bin/python -m bench.agent_overhead                       # zoo/build/{resnet18,mobilenetv2}-224.onnx
    .venv/bin/python -m bench.agent_overhead --model path/to.onnx --frames 500 --threads 1
    .venv/bin/python -m bench.agent_overhead --mqtt mqtt://127.0.0.1:1883   # the agent's run loop alongside

With ``--mqtt`` the agent's own run loop (``agent.runtime.Runtime``: outbox,
MQTT link, a heartbeat every second) runs in the same process during the
measurement, and the pipeline's window goes into its outbox every 50 frames:
the per-frame figures then include what telemetry and MQTT cost the frame loop
(the GIL, commits, publishing), as on a device.

A model is read with its ``zoo/<name>.json`` metadata when there is one;
otherwise as a 224x224 ImageNet-normalised classifier (the benchmark networks).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from agent.actions import ActionDispatcher
from agent.config import InferenceSettings, Rule
from agent.inference import ModelSession, SessionHolder
from agent.kernel.spec import ClassificationOutput, InputSpec
from agent.pipeline import Pipeline
from agent.runtime import Runtime
from tests.agent.helpers import make_agent_config

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODELS = [ROOT / "zoo/build/resnet18-224.onnx", ROOT / "zoo/build/mobilenetv2-224.onnx"]
TARGETS = {"resnet18": 1.10, "mobilenetv2": 1.25}


def load(path: Path, threads: int) -> ModelSession:
    settings = InferenceSettings(intra_op_threads=threads, inter_op_threads=1)
    for meta in (path.with_suffix(".json"), path.parent.parent / f"{path.stem}.json"):
        if meta.exists():
            return ModelSession.from_metadata(path, settings=settings)
    import onnxruntime as ort

    probe = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    graph_input, graph_output = probe.get_inputs()[0], probe.get_outputs()[0]
    classes = int(graph_output.shape[-1])
    spec = InputSpec(
        name=graph_input.name, shape=[1, 3, 224, 224], mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]
    )
    output = ClassificationOutput(output=graph_output.name, softmax=True, top_k=min(3, classes))
    return ModelSession(path, spec, output, [f"class{i}" for i in range(classes)], settings=settings)


def frames(count: int, width: int, height: int) -> list[np.ndarray]:
    """Rendered conveyor frames when the renderer is here (numpy + Pillow), noise otherwise."""
    try:
        from zoo.render import FrameStream
    except ImportError:
        rng = np.random.default_rng(0)
        return [rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8) for _ in range(count)]
    stream = FrameStream(seed=0, width=width, height=height)
    # A few distinct frames cycled: rendering is slow and the model's cost does not depend on content.
    distinct = [np.ascontiguousarray(np.asarray(next(stream).image)[:, :, ::-1]) for _ in range(min(count, 16))]
    return [distinct[i % len(distinct)] for i in range(count)]


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


class _Source:
    live = False

    def __init__(self, images: list[np.ndarray]) -> None:
        self.name, self._images, self._next = "bench", images, 0

    def read(self) -> tuple[np.ndarray, str] | None:
        if self._next >= len(self._images):
            return None
        self._next += 1
        return self._images[self._next - 1], ""

    def close(self) -> None:
        pass


WINDOW_EVERY = 50


@contextlib.contextmanager
def run_loop(mqtt_url: str | None, data_dir: Path) -> Iterator[Runtime | None]:
    """The agent's run loop in a thread, talking to a real broker; nothing when no URL is given."""
    if mqtt_url is None:
        yield None
        return
    config = make_agent_config(
        data_dir, mqtt_url=mqtt_url, device_id=f"dev-bench-{os.getpid()}", trust=[], agent={"heartbeat_interval_s": 1}
    )
    runtime = Runtime(config)
    thread = threading.Thread(target=runtime.run, name="agent-run", daemon=True)
    thread.start()
    if not runtime.link.subscribed.wait(15):
        raise SystemExit(f"the agent's link did not come up on {mqtt_url}")
    try:
        yield runtime
    finally:
        runtime.stop()
        thread.join(30)


def measure(
    path: Path, images: list[np.ndarray], threads: int, warmup: int, runtime: Runtime | None = None
) -> dict[str, Any]:
    session = load(path, threads)
    tensors = [session.preprocess(image)[0] for image in images]
    feeds = session.input_spec.name
    outputs = [session.output.output]
    # One action rule that never matches: the rule check is on the path, the action is not.
    actions = ActionDispatcher([_NoAction()])
    pipeline = Pipeline(_Source([]), SessionHolder(session), actions=actions)

    for i in range(warmup):
        session.session.run(outputs, {feeds: tensors[i % len(tensors)]})
        pipeline.process(_frame(images[i % len(images)], i))

    bare: list[float] = []
    agent: list[float] = []
    for i, (image, tensor) in enumerate(zip(images, tensors, strict=True)):
        order = (0, 1) if i % 2 == 0 else (1, 0)
        for which in order:
            if which == 0:
                start = time.perf_counter()
                session.session.run(outputs, {feeds: tensor})
                bare.append((time.perf_counter() - start) * 1000)
            else:
                frame = _frame(image, i)
                start = time.perf_counter()
                pipeline.process(frame)
                agent.append((time.perf_counter() - start) * 1000)
        if runtime is not None and i % WINDOW_EVERY == WINDOW_EVERY - 1:
            runtime.outbox.append("window", pipeline.take_window())
    pipeline.take_window()

    fps = throughput(session, images, threads)
    return {
        "model": path.name,
        "mqtt": runtime is not None,
        "threads": threads,
        "frames": len(images),
        "frame_size": f"{images[0].shape[1]}x{images[0].shape[0]}",
        "bare_p50_ms": round(statistics.median(bare), 3),
        "agent_p50_ms": round(statistics.median(agent), 3),
        "ratio_p50": round(statistics.median(agent) / statistics.median(bare), 3),
        "agent_p99_over_p50": round(percentile(agent, 99) / statistics.median(agent), 3),
        "bare_p99_over_p50": round(percentile(bare, 99) / statistics.median(bare), 3),
        **fps,
    }


def throughput(
    session: ModelSession, images: list[np.ndarray], threads: int, pairs: int = 8, block: int = 60
) -> dict[str, Any]:
    """Frames/s of the threaded pipeline (lossless queue), telemetry on and off.

    Short blocks in pairs, alternating which goes first; the ratio is the
    median of the pairs' ratios, so a burst of load from elsewhere spoils one
    pair rather than the figure.
    """
    block_frames = [images[i % len(images)] for i in range(block)]

    def rate(telemetry: bool) -> tuple[int, float]:
        pipeline = Pipeline(_Source(block_frames), SessionHolder(session), lossless=True, telemetry=telemetry)
        start = time.perf_counter()
        pipeline.start()
        pipeline.wait()
        elapsed = time.perf_counter() - start
        pipeline.stop()
        if telemetry:
            pipeline.take_window()
        return pipeline.inferred, elapsed

    totals = {True: [0, 0.0], False: [0, 0.0]}
    ratios = []
    for p in range(pairs):
        fps = {}
        for telemetry in (True, False) if p % 2 == 0 else (False, True):
            frames, elapsed = rate(telemetry)
            totals[telemetry][0] += frames
            totals[telemetry][1] += elapsed
            fps[telemetry] = frames / elapsed
        ratios.append(fps[True] / fps[False])
    on, off = (totals[t][0] / totals[t][1] for t in (True, False))
    return {
        "fps_telemetry_on": round(on, 2),
        "fps_telemetry_off": round(off, 2),
        "fps_on_over_off": round(statistics.median(ratios), 3),
    }


class _NoAction:
    name = "none"
    rule = Rule(classes=["never-a-class"], min_confidence=1.0)

    def __call__(self, payload: dict[str, Any]) -> None:
        pass


def _frame(image: np.ndarray, index: int) -> Any:
    from agent.capture import Frame

    return Frame(image=image, index=index, ts=time.time())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, action="append", help="an .onnx model (repeatable)")
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--size", default="640x480", help="camera frame size, WIDTHxHEIGHT")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--mqtt", help="run the agent's run loop (outbox, MQTT link, heartbeats) against this broker")
    args = parser.parse_args(argv)
    models = args.model or [p for p in DEFAULT_MODELS if p.exists()]
    if not models:
        print("no models: run `make models` (zoo/build/*-224.onnx) or pass --model", file=sys.stderr)
        return 2
    width, height = (int(v) for v in args.size.lower().split("x"))
    images = frames(args.frames, width, height)
    rows = []
    with tempfile.TemporaryDirectory() as data_dir, run_loop(args.mqtt, Path(data_dir)) as runtime:
        for path in models:
            rows.append(_row(path, images, args, runtime))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


def _row(path: Path, images: list[np.ndarray], args: argparse.Namespace, runtime: Runtime | None) -> dict[str, Any]:
    row = measure(path, images, args.threads, args.warmup, runtime)
    row["target_ratio"] = next((t for key, t in TARGETS.items() if key in path.name), None)
    print(json.dumps(row), flush=True)
    return row


if __name__ == "__main__":
    sys.exit(main())

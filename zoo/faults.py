"""Releases of the project's parts classifier, one good and several bad, to rehearse a rollout on real inference.

A staged rollout earns trust by stopping bad releases, so the demo and the
integration tests need bad releases that fail the way real ones do. Each
function here takes the committed classifier (``zoo.onnx_path``) and changes
one thing about its answers, in the ONNX graph itself, as a careless export,
a bad training run or a costly architecture change would:

* ``good``: the same network re-exported; new bytes, the same answers.
* ``unreproducible``: noise in the logits, drawn afresh on every run from a
  generator each process seeds for itself (as a dropout layer left in
  training mode would). The registry records reference outputs from its
  runs; a device's differ, so the bundle fails the device's validation and
  is never installed.
* ``slow``: a chain of convolutions on the image beside the network whose
  result is added to the logits times zero: the same answers, many times the
  latency, too slow for a site's latency budget.
* ``unsure``: the logits divided by a temperature: the same top-1 answers with
  their confidence collapsed.
* ``mislabelled``: the classes rotated by one: as confident as the good
  network and wrong on every frame (its answers disagree with production).
* ``blind``: one class's logit raised far above the rest: every part is
  called ``ok``, confidently, and every defect is missed.

Each returns the serialised model, ready for ``edgefleet publish --file``.
Needs ``onnx`` (the server install), not torch.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
from onnx import helper, numpy_helper

import zoo

BASE = "parts-classifier"


def load(name: str = BASE) -> onnx.ModelProto:
    return onnx.load(str(zoo.onnx_path(name)))


def _finish(model: onnx.ModelProto, release: str) -> bytes:
    # The release note in the model's own metadata: new bytes for every release, as a re-export gives.
    del model.metadata_props[:]
    model.metadata_props.append(onnx.StringStringEntryProto(key="release", value=release))
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _rewire(model: onnx.ModelProto, build: Callable[[str, str, str], list[onnx.NodeProto]]) -> onnx.ModelProto:
    """Put ``build(raw logits, image input, logits)``'s nodes between the network and its output.

    The network's own output is renamed; the nodes must produce the graph's output name from it.
    """
    graph = model.graph
    output, image = graph.output[0].name, graph.input[0].name
    raw = f"{output}_network"
    for node in graph.node:
        node.output[:] = [raw if name == output else name for name in node.output]
    graph.node.extend(build(raw, image, output))
    return model


def good(release: str = "good") -> bytes:
    """The classifier as it is, re-exported: a release that deserves to reach every device."""
    return _finish(load(), release)


def unreproducible(scale: float = 1.0, release: str = "unreproducible") -> bytes:
    """Logits plus uniform noise in [-scale, scale): no two runs agree, so no device reproduces the references."""

    def build(raw: str, image: str, out: str) -> list[onnx.NodeProto]:
        return [
            helper.make_node("RandomUniformLike", [raw], ["noise"], low=-scale, high=scale),
            helper.make_node("Add", [raw, "noise"], [out]),
        ]

    return _finish(_rewire(load(), build), release)


def slow(layers: int = 3, channels: int = 128, release: str = "slow") -> bytes:
    """``layers`` 3x3 convolutions of ``channels`` channels over the full image, their mean added times zero.

    Depends on the input, so no optimiser folds it away; ReLU and the mean keep it finite, so zero times it is zero.
    """
    rng = np.random.default_rng(0)
    inits = []

    def build(raw: str, image: str, out: str) -> list[onnx.NodeProto]:
        nodes, current, width = [], image, 3
        for i in range(layers):
            weight = (rng.standard_normal((channels, width, 3, 3)) / np.sqrt(9 * width)).astype(np.float32)
            inits.append(numpy_helper.from_array(weight, f"slow_w{i}"))
            nodes.append(helper.make_node("Conv", [current, f"slow_w{i}"], [f"slow_c{i}"], pads=[1, 1, 1, 1]))
            nodes.append(helper.make_node("Relu", [f"slow_c{i}"], [f"slow_r{i}"]))
            current, width = f"slow_r{i}", channels
        inits.append(numpy_helper.from_array(np.zeros((1, 1), np.float32), "slow_zero"))
        nodes += [
            helper.make_node("ReduceMean", [current], ["slow_mean"], axes=[1, 2, 3], keepdims=0),
            helper.make_node("Unsqueeze", ["slow_mean", "slow_axis"], ["slow_column"]),
            helper.make_node("Mul", ["slow_column", "slow_zero"], ["slow_nothing"]),
            helper.make_node("Add", [raw, "slow_nothing"], [out]),
        ]
        inits.append(numpy_helper.from_array(np.array([1], np.int64), "slow_axis"))
        return nodes

    model = _rewire(load(), build)
    model.graph.initializer.extend(inits)
    return _finish(model, release)


def unsure(temperature: float = 12.0, release: str = "unsure") -> bytes:
    """Logits divided by ``temperature``: the same top-1 class on every frame, its confidence near 1 / classes."""

    def build(raw: str, image: str, out: str) -> list[onnx.NodeProto]:
        return [helper.make_node("Div", [raw, "temperature"], [out])]

    model = _rewire(load(), build)
    model.graph.initializer.append(numpy_helper.from_array(np.array(temperature, np.float32), "temperature"))
    return _finish(model, release)


def mislabelled(shift: int = 1, release: str = "mislabelled") -> bytes:
    """Class i answered as class i + ``shift`` (mod classes): as confident as the network, wrong on every frame."""
    model = load()
    classes = model.graph.output[0].type.tensor_type.shape.dim[-1].dim_value
    if not classes:
        raise ValueError(f"{BASE} does not state its class count in its output shape")

    def build(raw: str, image: str, out: str) -> list[onnx.NodeProto]:
        return [helper.make_node("Gather", [raw, "rotation"], [out], axis=1)]

    # Output column j holds the logit of class j - shift: whatever the network answers i, this answers i + shift.
    order = np.array([(j - shift) % classes for j in range(classes)], np.int64)
    model = _rewire(model, build)
    model.graph.initializer.append(numpy_helper.from_array(order, "rotation"))
    return _finish(model, release)


def blind(label: int = 0, margin: float = 50.0, release: str = "blind") -> bytes:
    """Class ``label``'s logit raised by ``margin``: that answer on every frame, with high confidence."""
    model = load()
    classes = model.graph.output[0].type.tensor_type.shape.dim[-1].dim_value
    if not 0 <= label < classes:
        raise ValueError(f"label must be a class index below {classes}, got {label}")

    def build(raw: str, image: str, out: str) -> list[onnx.NodeProto]:
        return [helper.make_node("Add", [raw, "blind_bias"], [out])]

    bias = np.zeros((1, classes), np.float32)
    bias[0, label] = margin
    model = _rewire(model, build)
    model.graph.initializer.append(numpy_helper.from_array(bias, "blind_bias"))
    return _finish(model, release)


RELEASES: dict[str, Callable[[], bytes]] = {
    "good": good,
    "unreproducible": unreproducible,
    "slow": slow,
    "unsure": unsure,
    "mislabelled": mislabelled,
    "blind": blind,
}

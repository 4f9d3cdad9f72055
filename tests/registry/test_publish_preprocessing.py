"""Publishing a model with the newer pre-processing options: carried to the agent intact, bounded with clear 400s."""

from __future__ import annotations

import io
import json
from typing import Any

import cv2
import numpy as np
import pytest

from agent.inference import ModelSession
from agent.kernel import verify
from agent.kernel.manifest import MANIFEST_NAME
from agent.kernel.spec import InputSpec
from registry.models import Bundle, ModelVersion
from registry.variants import read_bundle
from tests.registry.helpers import publish

pytestmark = pytest.mark.django_db

LABELS = ["0_degree", "180_degree"]


@pytest.fixture
def ci(token_client):
    return token_client("publish")


def text_line_model(dynamic_width: bool) -> bytes:
    """A small text-line classifier: conv, relu, global pool, gemm, softmax; height 48, width fixed or dynamic."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(5)
    weights = [
        numpy_helper.from_array(rng.normal(0, 0.4, (4, 3, 3, 3)).astype(np.float32), "conv_w"),
        numpy_helper.from_array(rng.normal(0, 0.1, (4,)).astype(np.float32), "conv_b"),
        numpy_helper.from_array(rng.normal(0, 0.8, (4, 2)).astype(np.float32), "fc_w"),
        numpy_helper.from_array(np.zeros(2, dtype=np.float32), "fc_b"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "conv_w", "conv_b"], ["conv"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv"], ["relu"]),
        helper.make_node("GlobalAveragePool", ["relu"], ["pool"]),
        helper.make_node("Flatten", ["pool"], ["flat"]),
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["softmax_0.tmp_0"], axis=1),
    ]
    width: int | str = "width" if dynamic_width else 320
    graph = helper.make_graph(
        nodes,
        "text-line-orientation",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 48, width])],
        [helper.make_tensor_value_info("softmax_0.tmp_0", TensorProto.FLOAT, ["batch", 2])],
        initializer=weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def text_line(height: int, width: int, seed: int) -> bytes:
    """A PNG of dark strokes on a light band, ``width`` x ``height``."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    pixels = np.full((height, width, 3), 230, dtype=np.uint8)
    for x in range(2, width - 4, 7):
        top = int(rng.integers(0, max(1, height // 3)))
        pixels[top : height - top, x : x + 3] = rng.integers(0, 80, size=3, dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def text_line_metadata(**input_fields: Any) -> dict[str, Any]:
    spec = {
        "name": "x",
        "shape": [None, 3, 48, 320],
        "colour": "BGR",
        "resize": "fit_height",
        "mean": [0.5],
        "std": [0.5],
        "pad_value": 0.0,
        "pad_space": "normalised",
        **input_fields,
    }
    return {
        "version": "1.0.0",
        "task": "classification",
        "labels": LABELS,
        "input": spec,
        "output": {"kind": "classification", "output": "softmax_0.tmp_0", "softmax": False, "top_k": 2},
        "tolerance": {"atol": 1e-5, "rtol": 1e-4},
    }


# (height, width) of the reference images: wide enough to be capped, narrow, in between.
IMAGES = [(30, 200), (48, 41), (40, 100)]


@pytest.mark.parametrize(
    ("dynamic", "input_fields", "widths"),
    [
        (False, {}, [320, 320, 320]),
        (True, {"shape": [None, 3, 48, None], "max_width": 320, "width_multiple": 32}, [320, 64, 128]),
    ],
    ids=["fixed-width", "dynamic-width"],
)
def test_a_fit_height_spec_round_trips_from_publish_metadata_through_the_manifest_to_the_agent(
    ci, tmp_path, dynamic, input_fields, widths
):
    metadata = text_line_metadata(**input_fields)
    images = [text_line(h, w, seed) for seed, (h, w) in enumerate(IMAGES)]

    response = publish(ci, text_line_model(dynamic), metadata, name="text-line", images=images)

    assert response.status_code == 201, response.content
    published = InputSpec.model_validate(metadata["input"])
    assert InputSpec.model_validate(ModelVersion.objects.get().input_spec) == published
    verified = read_bundle(Bundle.objects.get(), tmp_path / "bundle")
    assert verified.manifest.input == published
    signed = json.loads((verified.directory / MANIFEST_NAME).read_bytes())["input"]
    assert (signed["resize"], signed["pad_value"], signed["pad_space"]) == ("fit_height", 0.0, "normalised")
    assert verify.check_references(verified) == len(images)

    session = ModelSession.from_bundle(verified.directory)

    assert session.input_spec == published
    for case, image in zip(verified.manifest.references, images, strict=True):
        frame = cv2.imdecode(np.frombuffer(image, dtype=np.uint8), cv2.IMREAD_COLOR)
        tensor, _ = session.preprocess(frame)
        # What the device makes of the picture is the reference tensor the registry signed.
        np.testing.assert_array_equal(tensor, np.load(verified.directory / case.input))
        expected = np.load(verified.directory / case.expected[0])
        result = session.infer(frame)
        assert result.label == LABELS[int(np.argmax(expected))]
        # softmax false: the graph's own probabilities, not softmaxed again.
        assert result.confidence == pytest.approx(float(np.max(expected)), abs=1e-5)
    assert [np.load(verified.directory / c.input).shape[3] for c in verified.manifest.references] == widths


@pytest.mark.parametrize(
    ("input_fields", "says"),
    [
        ({"shape": [None, 3, 48, None]}, "needs max_width"),
        ({"shape": [None, 3, None, 320]}, "needs a fixed height"),
        ({"max_width": 640}, "differs from the shape's fixed width 320"),
        ({"pad_value": 300, "pad_space": "pixel"}, "integer from 0 to 255"),
        ({"pad_value": 1e9}, "at most 10000 from 0"),
        ({"resize": "stretch"}, "stretch does not pad"),
        ({"dtype": "uint8"}, "needs dtype float32"),
        ({"shape": [None, 3, 48, None], "max_width": 99999}, "less than or equal to 16384"),
        ({"pad_space": "screen"}, "'pixel' or 'normalised'"),
    ],
)
def test_inconsistent_or_unbounded_preprocessing_options_are_a_400_naming_the_input(ci, input_fields, says):
    response = publish(ci, text_line_model(False), text_line_metadata(**input_fields), name="text-line")

    assert response.status_code == 400, response.content
    body = response.json()
    assert body["code"] == "bad_metadata"
    assert body["detail"].startswith("input: ") or body["detail"].startswith("input.")
    assert says in body["detail"] and "Value error" not in body["detail"]
    assert body["fields"]["metadata"] == [body["detail"]]
    assert not ModelVersion.objects.exists()


def test_a_dynamic_width_for_a_graph_with_a_fixed_width_is_a_shape_mismatch(ci):
    metadata = text_line_metadata(shape=[None, 3, 48, None], max_width=320)

    response = publish(ci, text_line_model(dynamic_width=False), metadata, name="text-line")

    assert response.status_code == 400, response.content
    assert response.json()["code"] == "shape_mismatch"
    assert "fixed at 320" in response.json()["detail"]
    assert not ModelVersion.objects.exists()


def test_a_non_finite_pad_value_is_a_400_naming_the_field(ci):
    metadata = text_line_metadata(pad_value=float("nan"))

    response = publish(ci, text_line_model(False), metadata, name="text-line")

    assert response.status_code == 400
    assert response.json()["detail"] == "input.pad_value: Input should be a finite number"

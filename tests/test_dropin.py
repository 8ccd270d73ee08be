"""Drop-in outputs: the written model keeps the source's interface (dynamic dimensions included) and
metadata, whatever sizes `--input-shape` gave the calibration."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from dfq_onnx.models import builders
from onnx import helper

import dfq_onnx
from dfq_onnx.core import declared_io, ir

HINT = {"input": (1, 3, 4, 8)}


def _session(model) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def _dims(vi) -> list:
    return declared_io.value_info_shape(vi)


@pytest.mark.parametrize("calib", ["synthetic", "noise"])
def test_dynamic_width_survives_the_calibration_shape(calib):
    source = builders.conv_sequence(w=None)
    before = source.SerializeToString()
    out, _ = dfq_onnx.quantize(source, input_shapes=HINT, calib=calib, synth_samples=4, synth_steps=2,
                               use_cache=False, progress=False)
    assert source.SerializeToString() == before                      # the caller's proto is untouched
    assert _dims(out.graph.input[0]) == ["N", 3, 4, "W"]
    assert _dims(out.graph.output[0]) == ["N", "W", 6]
    assert [i.name for i in out.graph.input] == ["input"] and out.graph.output[0].name == "output"
    ir.check_model(out)
    # the width is read from a Shape subgraph: folded at the hinted size it would refuse any other width
    assert any(n.op_type == "Shape" for n in out.graph.node)
    fp32, q = _session(source), _session(out)
    rng = np.random.default_rng(0)
    for width in (8, 13, 40):
        x = rng.standard_normal((2, 3, 4, width)).astype(np.float32)
        ref, got = fp32.run(None, {"input": x})[0], q.run(None, {"input": x})[0]
        assert got.shape == ref.shape == (2, width, 6)
        assert np.mean(ref.argmax(-1) == got.argmax(-1)) > 0.8, width


def test_dynamic_spatial_dims_of_a_conv_model():
    source = builders.conv_bn_relu(hw=None)
    out, _ = dfq_onnx.quantize(source, input_shapes={"input": (1, 3, 8, 8)}, calib="noise", progress=False)
    assert _dims(out.graph.input[0]) == ["N", 3, "H", "W"]
    assert _dims(out.graph.output[0]) == ["N", 4, "H", "W"]
    y = _session(out).run(None, {"input": np.zeros((1, 3, 12, 20), np.float32)})[0]
    assert y.shape == (1, 4, 12, 20)


def test_metadata_doc_strings_and_version_are_carried_over():
    source = builders.conv_sequence()
    helper.set_model_props(source, {"character": "a\nb\nc", "author": "tests"})
    source.doc_string, source.model_version, source.domain = "a recognizer", 7, "org.example"
    source.graph.doc_string = "graph doc"
    source.graph.input[0].doc_string = "image, normalized to [-1, 1]"
    out, _ = dfq_onnx.quantize(source, calib="noise", progress=False)
    assert {p.key: p.value for p in out.metadata_props} == {"character": "a\nb\nc", "author": "tests"}
    assert (out.doc_string, out.model_version, out.domain) == ("a recognizer", 7, "org.example")
    assert out.graph.doc_string == "graph doc" and out.graph.name == source.graph.name
    assert out.graph.input[0].doc_string == "image, normalized to [-1, 1]"
    assert out.producer_name == "dfq-onnx"
    meta = _session(out).get_modelmeta()
    assert meta.custom_metadata_map["character"] == "a\nb\nc"


def test_static_models_keep_their_shape_annotations():
    source = builders.conv_bn_relu_residual()
    out, _ = dfq_onnx.quantize(source, calib="noise", progress=False)
    assert _dims(out.graph.input[0]) == _dims(source.graph.input[0])
    assert len(out.graph.value_info) > 0      # nothing was resized: the inferred shapes stay valid


def _model(nodes, inits, in_shape, out_shape):
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("input", 1, in_shape)],
                              [helper.make_tensor_value_info("output", 1, out_shape)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_shape_subgraphs_fold_without_pinning_the_width():
    """Paddle's Reshape target (Shape -> Cast -> Slice[0:2] -> Cast -> Concat(-1)) and the version
    converter's Flatten -> Softmax -> Reshape(Shape(x)) become a constant target [0, 0, -1] and one
    Softmax; shapes are known at the hinted width; any width still runs."""
    from _util import compile_state
    from dfq_onnx.passes.normalize import Normalize
    from onnx import numpy_helper

    def const(name, values):
        return numpy_helper.from_array(np.asarray(values, np.int64), name)

    nodes = [helper.make_node("Shape", ["input"], ["s"]),
             helper.make_node("Cast", ["s"], ["s32"], to=6),
             helper.make_node("Slice", ["s32", "zero", "two", "zero"], ["head"]),
             helper.make_node("Cast", ["head"], ["head64"], to=7),
             helper.make_node("Concat", ["head64", "minus1"], ["target"], axis=0),
             helper.make_node("Reshape", ["input", "target"], ["flat3"]),
             helper.make_node("Flatten", ["flat3"], ["f2"], axis=2),
             helper.make_node("Softmax", ["f2"], ["p2"], axis=-1),
             helper.make_node("Shape", ["flat3"], ["s3"]),
             helper.make_node("Reshape", ["p2", "s3"], ["output"])]
    model = _model(nodes, [const("zero", [0]), const("two", [2]), const("minus1", [-1])],
                   ["N", 4, 2, "W"], ["N", 4, "L"])
    state = compile_state(model, [Normalize()], input_shapes={"input": (1, 4, 2, 5)})
    assert [n.op for n in state.graph.nodes] == ["Reshape", "Softmax"]
    np.testing.assert_array_equal(state.graph.nodes[0].inputs[1].values, [0, 0, -1])
    assert state.graph.nodes[1].outputs[0].shape[1:] == [4, 10]
    out, _ = dfq_onnx.quantize(model, input_shapes={"input": (1, 4, 2, 5)}, calib="noise", progress=False)
    assert _dims(out.graph.input[0]) == ["N", 4, 2, "W"]
    x = np.random.default_rng(0).standard_normal((3, 4, 2, 7)).astype(np.float32)
    ref = _session(model).run(None, {"input": x})[0]
    np.testing.assert_allclose(_session(out).run(None, {"input": x})[0], ref, atol=0.02)

"""Normalize's rewrites: zero Pads folded into Conv / AveragePool, shape-computed Reshape targets made
constant; the float model computes the same, and ORT's quantized graph keeps no float Pad or Shape."""

from __future__ import annotations

import numpy as np
import pytest
from _util import compile_state, nodes_by_op, normal_feeds, run, session, state_model
from dfq_onnx.models import exported
from dfq_onnx.passes.normalize import Normalize

import dfq_onnx


def _normalized(model):
    state = compile_state(model, [Normalize()])
    return state, state_model(state)


def test_zero_pads_fold_into_conv_and_pool_and_compute_the_same():
    model = exported.same_pad_flatten()
    state, out = _normalized(model)
    assert not nodes_by_op(out, "Pad")
    conv1 = next(n for n in out.graph.node if n.name == "conv1")
    pool = next(n for n in out.graph.node if n.name == "pool")
    attrs = {n.name: {a.name: a for a in n.attribute} for n in (conv1, pool)}
    assert list(attrs["conv1"]["pads"].ints) == [0, 0, 1, 1]
    assert list(attrs["pool"]["pads"].ints) == [1, 1, 0, 0] and attrs["pool"]["count_include_pad"].i == 1
    assert state.report.model["canonicalized"]["Pad folded"] == 2
    feeds = normal_feeds(model, n=4)
    np.testing.assert_allclose(run(out, feeds)[0], run(model, feeds)[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kw", [{"pad_value": 0.5}, {"pad_mode": "reflect"}], ids=["value", "mode"])
def test_pads_that_are_not_zero_padding_stay(kw):
    _, out = _normalized(exported.same_pad_flatten(**kw))
    assert len(nodes_by_op(out, "Pad")) == 2


def test_shape_computed_reshape_target_becomes_constant():
    model = exported.same_pad_flatten()
    _, out = _normalized(model)
    assert not nodes_by_op(out, "Shape") and not nodes_by_op(out, "Concat")
    reshape = nodes_by_op(out, "Reshape")[0]
    target = next(t for t in out.graph.initializer if t.name == reshape.input[1])
    assert list(np.frombuffer(target.raw_data, np.int64)) == [0, -1]
    feeds = normal_feeds(model, n=3)
    np.testing.assert_allclose(run(out, feeds)[0], run(model, feeds)[0], rtol=1e-5, atol=1e-5)


def test_quantized_output_runs_pad_and_flatten_on_integer_data(tmp_path):
    out, _ = dfq_onnx.quantize(exported.same_pad_flatten(), calib="noise", progress=False)
    path = str(tmp_path / "opt.onnx")
    session(out, optimized_path=path)
    import onnx

    ops = [n.op_type for n in onnx.load(path).graph.node]
    assert "Pad" not in ops and "Shape" not in ops and ops.count("QuantizeLinear") == 1
    assert ops.count("QLinearConv") == 2 and "QGemm" in ops


def test_softmax_wrapped_for_opset_11_becomes_a_last_axis_softmax():
    model = exported.wrapped_softmax()
    state, out = _normalized(model)
    assert state.report.model["canonicalized"]["Softmax unwrapped"] == 1
    assert [n.op_type for n in out.graph.node] == ["MatMul", "Softmax", "MatMul"]
    feeds = normal_feeds(model, n=3)
    np.testing.assert_allclose(run(out, feeds)[0], run(model, feeds)[0], rtol=1e-5, atol=1e-6)


def _affine_model(layer: str, op: str, attrs: dict | None = None, shared: bool = False):
    """input -> layer (Conv [4,3,3,3] or Gemm [5,6]) -> op(constant per output channel) -> output."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    if layer == "Conv":
        w, x, c, y = rng.standard_normal((4, 3, 3, 3)), ["N", 3, 6, 6], rng.uniform(0.5, 2, (1, 4, 1, 1)), \
            ["N", 4, 4, 4]
    else:
        w, x, c, y = rng.standard_normal((5, 6)), ["N", 6], rng.uniform(0.5, 2, (5,)), ["N", 5]
    inits = [numpy_helper.from_array(w.astype(np.float32), "w"),
             numpy_helper.from_array(c.astype(np.float32), "c")]
    nodes = [helper.make_node(layer, ["input", "w"], ["z"], name="layer", **(attrs or {})),
             helper.make_node(op, ["z", "c"], ["output" if not shared else "o1"], name="affine")]
    outputs = [helper.make_tensor_value_info("output" if not shared else "o1", TensorProto.FLOAT, y)]
    if shared:      # a second layer reads the same weight: it must not be rescaled
        nodes.append(helper.make_node(layer, ["input", "w"], ["o2"], name="layer2", **(attrs or {})))
        outputs.append(helper.make_tensor_value_info("o2", TensorProto.FLOAT, y))
    graph = helper.make_graph(nodes, "affine", [helper.make_tensor_value_info("input", TensorProto.FLOAT, x)],
                              outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return onnx.shape_inference.infer_shapes(model)


@pytest.mark.parametrize("layer, op, attrs, shared, folds", [
    ("Conv", "Mul", {}, False, True), ("Conv", "Div", {}, False, True), ("Conv", "Sub", {}, False, True),
    ("Gemm", "Add", {"transB": 1}, False, True), ("Gemm", "Mul", {"transB": 1, "beta": 2.0}, False, True),
    ("Gemm", "Add", {"transB": 1, "beta": 2.0}, False, False),          # beta * C: the shift would scale
    ("Conv", "Mul", {}, True, False),                                    # shared weight
], ids=["conv-mul", "conv-div", "conv-sub", "gemm-add", "gemm-beta-mul", "gemm-beta-add", "shared"])
def test_per_channel_affine_folds_into_the_layer_when_legal(layer, op, attrs, shared, folds):
    model = _affine_model(layer, op, attrs, shared)
    state, out = _normalized(model)
    assert state.report.model["canonicalized"].get("Mul/Add folded into layer", 0) == int(folds)
    assert (not nodes_by_op(out, op)) is folds
    feeds = normal_feeds(model, n=3)
    for got, ref in zip(run(out, feeds), run(model, feeds)):
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("op, static", [("LogSoftmax", False), ("Hardmax", False), ("Softmax", True)])
def test_every_normalizer_unwraps_with_a_shape_or_static_target(op, static):
    """Flatten -> op -> Reshape back to x's shape, the target Shape(x) or x's static shape: one op."""
    from onnx import helper, numpy_helper

    model = exported.wrapped_softmax()
    nodes = model.graph.node
    next(n for n in nodes if n.name == "softmax").op_type = op
    if static:          # a static-size model: the target is a constant [2, 4, 6]
        model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 2
        model.graph.output[0].type.tensor_type.shape.dim[0].dim_value = 2
        model.graph.initializer.append(numpy_helper.from_array(np.array([2, 4, 6], np.int64), "fixed"))
        next(n for n in nodes if n.name == "reshape").input[1] = "fixed"
        nodes.remove(next(n for n in nodes if n.name == "shape"))
        del model.graph.value_info[:]
    state, out = _normalized(model)
    assert state.report.model["canonicalized"]["Softmax unwrapped"] == 1
    assert [n.op_type for n in out.graph.node] == ["MatMul", op, "MatMul"]
    assert helper.get_attribute_value(out.graph.node[1].attribute[0]) == -1
    feeds = normal_feeds(model, n=2)
    np.testing.assert_allclose(run(out, feeds)[0], run(model, feeds)[0], rtol=1e-5, atol=1e-6)


def test_slice_of_a_shape_keeps_the_positions_of_omitted_inputs():
    """Slice(Shape(x), [1], [3], axes omitted, steps [1]) is dims 1..2 of x; a step of 2 takes 0 and 2."""
    import onnx_graphsurgeon as gs

    from dfq_onnx.core.rewrites import shape_entries

    x = gs.Variable("x", np.float32, ["N", 4, 5, 6])
    shape = gs.Variable("s", np.int64, [4])
    gs.Node("Shape", inputs=[x], outputs=[shape])

    def sliced(start, end, step):
        out = gs.Variable(f"out{start}{end}{step}", np.int64, None)
        args = [gs.Constant(f"a{start}{end}{step}{k}", np.array([v], np.int64)) for k, v in
                enumerate((start, end))]
        gs.Node("Slice", inputs=[shape, *args, gs.Variable.empty(),
                                 gs.Constant(f"st{start}{end}{step}", np.array([step], np.int64))],
                outputs=[out])
        return shape_entries(out)

    assert sliced(1, 3, 1) == [(x, 1), (x, 2)]
    assert sliced(0, 9, 2) == [(x, 0), (x, 2)]
    assert sliced(-1, -9, -1) == [(x, 3), (x, 2), (x, 1), (x, 0)]


def test_token_wise_gemm_becomes_a_matmul_and_computes_the_same():
    model = exported.conv1d_mlp()
    state, out = _normalized(model)
    assert not nodes_by_op(out, "Gemm") and not nodes_by_op(out, "Reshape") and not nodes_by_op(out, "Shape")
    assert [n.name for n in nodes_by_op(out, "MatMul")] == ["fc1", "fc2"]
    assert state.report.model["canonicalized"]["token-wise Gemm unflattened"] == 2
    feeds = normal_feeds(model, n=3)
    np.testing.assert_allclose(run(out, feeds)[0], run(model, feeds)[0], rtol=1e-5, atol=1e-5)


def test_gemm_whose_output_stays_flat_keeps_its_gemm():
    _, out = _normalized(exported.conv1d_mlp(back="flat"))
    assert [n.name for n in nodes_by_op(out, "Gemm")] == ["fc2"] and len(nodes_by_op(out, "MatMul")) == 1


def test_token_wise_gemm_takes_the_targets_dynamic_form():
    """On ORT CPU a transformer's token-wise linear layers are dynamic int8 forms whatever the exporter's
    spelling: GPT-2's Conv1D (a Gemm between Reshapes) was statically quantized on synthetic ranges."""
    model = exported.conv1d_mlp()
    out, report = dfq_onnx.quantize(model, calib="noise", progress=False)
    ops = [n.op_type for n in out.graph.node]
    assert ops.count("MatMulInteger") == 2 and "QuantizeLinear" not in ops and "Gemm" not in ops
    assert [layer["form"] for layer in report.layers] == ["W8A8-dyn", "W8A8-dyn"]
    feeds = normal_feeds(model, n=4)
    ref, got = run(model, feeds)[0], run(out, feeds)[0]
    assert np.sum(ref ** 2) / np.sum((ref - got) ** 2) > 10 ** 3     # > 30 dB

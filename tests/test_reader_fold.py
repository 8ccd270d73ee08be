"""Normalize's reader folds: a scalar Mul / Div read only by layers goes into their weights, a layer's
HardSigmoid into the layer + Clip(0, 1); the float model computes the same, and the quantized graph
keeps neither as a float op between Q/DQ pairs."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from _util import compile_state, nodes_by_op, normal_feeds, run, state_model
from dfq_onnx.passes.normalize import Normalize
from onnx import TensorProto, helper, numpy_helper

import dfq_onnx


def _mobilenet_v3_block(extra_reader: str | None = None) -> onnx.ModelProto:
    """conv1 -> hard-swish spelled x * Clip(x + 3, 0, 6) / 6 -> conv2 -> squeeze-excitation gate
    HardSigmoid(conv3(GAP)) * features -> output (Paddle's export of MobileNetV3)."""
    rng = np.random.default_rng(0)

    def const(name, shape, scale=0.3):
        return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)

    inits = [const("w1", (8, 3, 3, 3)), const("b1", (8,)), const("w2", (8, 8, 1, 1)),
             const("w3", (8, 8, 1, 1)), const("b3", (8,)),
             numpy_helper.from_array(np.array(3.0, np.float32), "three"),
             numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
             numpy_helper.from_array(np.array(6.0, np.float32), "six")]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["c1", "three"], ["a"], name="add3"),
        helper.make_node("Clip", ["a", "zero", "six"], ["r6"], name="relu6"),
        helper.make_node("Mul", ["c1", "r6"], ["m"], name="mul"),
        helper.make_node("Div", ["m", "six"], ["hs"], name="div6"),
        helper.make_node("Conv", ["hs", "w2"], ["c2"], name="conv2"),
        helper.make_node("GlobalAveragePool", ["c2"], ["g"], name="gap"),
        helper.make_node("Conv", ["g", "w3", "b3"], ["c3"], name="conv3"),
        helper.make_node("HardSigmoid", ["c3"], ["gate"], name="hsig", alpha=0.2, beta=0.5),
        helper.make_node("Mul", ["c2", "gate"], ["y"], name="scale"),
    ]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 8, 8, 8])]
    if extra_reader == "add":
        nodes.append(helper.make_node("Add", ["hs", "hs"], ["z"], name="extra"))
        outputs.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, [None, 8, 8, 8]))
    elif extra_reader == "output":
        outputs.append(helper.make_tensor_value_info("hs", TensorProto.FLOAT, [None, 8, 8, 8]))
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3, 8, 8])
    graph = helper.make_graph(nodes, "mbv3", [x], outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def _normalized(model):
    state = compile_state(model, [Normalize()])
    return state, state_model(state)


def test_hard_swish_division_and_hard_sigmoid_fold_and_compute_the_same():
    model = _mobilenet_v3_block()
    state, out = _normalized(model)
    done = state.report.model["canonicalized"]
    assert done["scalar Mul/Div folded into readers"] == 1 and done["HardSigmoid folded into layer"] == 1
    assert not nodes_by_op(out, "Div") and not nodes_by_op(out, "HardSigmoid")
    clip = [n for n in out.graph.node if n.op_type == "Clip" and n.input[0] == "c3"]
    assert len(clip) == 1
    feeds = normal_feeds(model, n=4)
    np.testing.assert_allclose(run(out, feeds)[0], run(model, feeds)[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("extra", ["add", "output"])
def test_a_division_read_by_anything_but_layers_stays(extra):
    model = _mobilenet_v3_block(extra)
    state, out = _normalized(model)
    assert state.report.model["canonicalized"].get("scalar Mul/Div folded into readers", 0) == 0
    assert len(nodes_by_op(out, "Div")) == 1
    feeds = normal_feeds(model, n=2)
    for got, ref in zip(run(out, feeds), run(model, feeds)):
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


def test_quantized_block_runs_the_gate_in_the_layers_integer_kernel(tmp_path):
    """The Clip(0, 1) of the folded HardSigmoid is absorbed into conv3's output encoding: ORT's optimized
    quantized graph has no float Clip, HardSigmoid or Div left."""
    from _util import session

    model = _mobilenet_v3_block()
    out, _ = dfq_onnx.quantize(model, calib="noise", act_bits=8, seed=0)
    opt = tmp_path / "opt.onnx"
    session(out, optimized_path=str(opt))
    ops = {n.op_type for n in onnx.load(opt).graph.node}
    assert not ops & {"Div", "HardSigmoid", "Clip"}, ops
    assert "QLinearConv" in ops


def test_division_between_quantizers_becomes_a_rescale(monkeypatch):
    """A Div by 6 read by an Add (no layer to fold into) stays in the float graph; in the QDQ graph its
    readers dequantize the Mul's codes with the Div output's scale: no float Div, same results."""
    from _util import session

    from dfq_onnx.backends import scale_fold

    model = _mobilenet_v3_block("add")
    out, report = dfq_onnx.quantize(model, calib="noise", act_bits=8, seed=0)
    emit = next(p["summary"] for p in report.passes if p["pass"] == "EmitQDQ")
    assert "1 scalar Div read as a rescale" in emit
    assert not nodes_by_op(out, "Div")
    monkeypatch.setattr(scale_fold, "fold_scalar_divisions", lambda graph: 0)
    monkeypatch.setattr("dfq_onnx.passes.emit_qdq.fold_scalar_divisions", lambda graph: 0)
    kept, _ = dfq_onnx.quantize(model, calib="noise", act_bits=8, seed=0)
    assert len(nodes_by_op(kept, "Div")) == 1
    feeds = normal_feeds(model, n=4)
    for got, ref in zip(session(out).run(None, feeds), session(kept).run(None, feeds)):
        step = float(np.ptp(ref)) / 255
        assert np.max(np.abs(got - ref)) <= 2 * step


def test_gelus_closing_half_stays_so_the_quantized_model_runs_one_gelu_kernel():
    """GELU as torch.onnx writes it ends in a scalar Mul(0.5) read only by the FFN's second MatMul; folded
    into that MatMul's weights, ORT no longer recognizes the pattern and runs Div, Erf, Add, Mul as four
    kernels (a BERT-style NER tagger: 6 Gelu in ORT's own dynamic int8 model, none in dfq's). It stays:
    the quantized model fuses one Gelu per layer, as the float model does (BiasGelu there)."""
    from dfq_onnx.models.token_builders import token_classifier

    from dfq_onnx.backends.fusion import optimized_graph

    model = token_classifier(act="gelu", layers=2)
    state, norm = _normalized(model)
    assert state.report.model["canonicalized"].get("scalar Mul/Div folded into readers", 0) == 0
    assert len([n for n in norm.graph.node if n.op_type == "Mul" and n.name.endswith("gelu_half")]) == 2
    fp32_ops = [n.op_type for n in optimized_graph(model).node]
    out, _ = dfq_onnx.quantize(model, seed=0, progress=False)
    ops = [n.op_type for n in optimized_graph(out).node]
    assert fp32_ops.count("BiasGelu") == 2 and ops.count("Gelu") == 2, ops   # float: the bias Add fused too
    assert "Erf" not in ops

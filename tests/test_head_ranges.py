"""HeadMaxRanges: a classifier head with a hidden layer is calibrated again with its pool taken as a max."""

from __future__ import annotations

import numpy as np
import onnx
from _util import compile_state, model_upto, session
from dfq_onnx.models import builders
from dfq_onnx.passes.calibrate import Calibrate
from dfq_onnx.passes.emit_qdq import EmitQDQ
from dfq_onnx.passes.fold_bn import FoldBatchNorm
from dfq_onnx.passes.head_ranges import HeadMaxRanges, hidden_heads, max_pooled
from dfq_onnx.passes.normalize import Normalize
from dfq_onnx.passes.plan_uniform import UniformPlan
from dfq_onnx.passes.quant_groups import FindQuantGroups
from onnx import helper, numpy_helper

import dfq_onnx
from dfq_onnx.core import ir
from dfq_onnx.core.pass_base import run_passes

FRONT = [Normalize(), FoldBatchNorm(), FindQuantGroups()]
FAST = dict(use_cache=False, progress=False, latency_check=False)


def _mlp_head() -> onnx.ModelProto:
    return builders.with_data_bn_stats(builders.softmax_classifier(hw=16, hidden=32, gain=4.0))


def _encoding(model: onnx.ModelProto, tensor: str) -> tuple[float, float]:
    init = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    q = next(n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == tensor)
    scale, zp = float(init[q.input[1]]), init[q.input[2]]
    qmin, qmax = (0, 255) if zp.dtype == np.uint8 else (-128, 127)
    return (qmin - float(zp)) * scale, (qmax - float(zp)) * scale


def test_the_hidden_head_is_found_and_one_layer_heads_are_not():
    state = compile_state(_mlp_head(), FRONT)
    [(pool, tensors)] = hidden_heads(state.graph)
    assert pool.op == "GlobalAveragePool" and tensors[0] == pool.outputs[0].name
    assert {"flat", "fc1_out", "fc1_relu", "logits", "output"} <= set(tensors)
    one_layer = compile_state(builders.with_data_bn_stats(builders.conv_bn_relu_residual(c=8, hw=8)), FRONT)
    assert hidden_heads(one_layer.graph) == []


def test_a_head_that_reads_the_body_again_is_not_a_hidden_head():
    """A second branch from the pool's input joins the head: the scores do not follow from the pool alone."""
    model = builders.softmax_classifier(hw=8, hidden=8)
    g = model.graph
    side = helper.make_node("ReduceMax", ["relu1_out"], ["side"], axes=[2, 3], keepdims=0, name="side")
    join = next(n for n in g.node if n.name == "relu2")
    join.input[0] = "fc1_join"
    g.node.insert(list(g.node).index(join), side)
    w = numpy_helper.from_array(np.ones((8, 8), np.float32), "side.weight")
    g.initializer.append(w)
    g.node.insert(list(g.node).index(join),
                  helper.make_node("MatMul", ["side", "side.weight"], ["side_fc"], name="side_fc"))
    g.node.insert(list(g.node).index(join), helper.make_node("Add", ["fc1_out", "side_fc"], ["fc1_join"],
                                                             name="join"))
    onnx.checker.check_model(model)
    assert hidden_heads(compile_state(model, FRONT).graph) == []


def test_hidden_head_ranges_cover_the_max_pooled_run():
    """The head's encodings take the union with the run whose GlobalAveragePool is a GlobalMaxPool: the
    hidden layer's top is at least what that run reaches on the same synthetic samples (it was the GAP
    run's alone), and the report keeps both."""
    model = _mlp_head()
    q, report = dfq_onnx.quantize(model, **FAST)
    notes = report.notes["head_max_ranges"]
    hidden = notes["fc1_relu"]
    assert hidden["max_pooled"][1] > hidden["measured"][1]
    assert hidden["range"] == [min(hidden["measured"][0], hidden["max_pooled"][0]),
                               max(hidden["measured"][1], hidden["max_pooled"][1])]
    lo, hi = _encoding(q, "fc1_relu")
    assert hi >= hidden["max_pooled"][1] * (1 - 1e-3) and lo <= 1e-6


def test_max_pooled_copy_swaps_only_the_named_pools():
    state = compile_state(_mlp_head(), FRONT)
    [(pool, _)] = hidden_heads(state.graph)
    g = max_pooled(state.graph, [pool.name])
    assert [n.op for n in g.nodes if n.name == pool.name] == ["GlobalMaxPool"]
    assert [n.op for n in state.graph.nodes if n.name == pool.name] == ["GlobalAveragePool"]
    x = np.random.default_rng(0).standard_normal((4, 3, 16, 16)).astype(np.float32)
    body = state.graph.copy()
    body.outputs = [body.tensors()["relu1_out"]]
    g.outputs = [g.tensors()["pool"]]
    features = session(ir.session_model(body)).run(None, {"input": x})[0]
    pooled = session(ir.session_model(g)).run(None, {"input": x})[0]
    np.testing.assert_allclose(pooled, features.max(axis=(2, 3), keepdims=True), rtol=1e-6)


def test_spatially_consistent_inputs_are_clipped_less_in_the_head():
    """Calibrated on inputs whose channels average out over space (synthetic-like), evaluated on inputs
    with a per-channel offset (real-like: a feature persists over the image): with the head's ranges
    widened to the max-pooled run, fewer hidden values are clipped and the probabilities are closer."""
    model = _mlp_head()
    rng = np.random.default_rng(0)
    calib = rng.standard_normal((64, 3, 16, 16)).astype(np.float32)
    calib -= calib.mean(axis=(2, 3), keepdims=True)
    held = rng.standard_normal((256, 3, 16, 16)) * 0.5 + rng.normal(0, 1.5, (256, 3, 1, 1))
    held = held.astype(np.float32)
    ref = session(model).run(None, {"input": held})[0]
    clipped, error = [], []
    for rule in ([], [HeadMaxRanges()]):
        state = compile_state(model, FRONT, synth_views=1)
        state.calib = {"input": calib}
        run_passes([Calibrate(), *rule, UniformPlan()], state)
        hidden = session(model_upto(model, "fc1_relu")).run(None, {"input": held})[0]
        clipped.append(float(np.mean(hidden > state.ranges["fc1_relu"].hi)))
        run_passes([EmitQDQ()], state)
        out = session(ir.to_model(state.graph)).run(None, {"input": held})[0]
        error.append(float(np.abs(out - ref).mean()))
    assert clipped[1] < clipped[0] / 2
    assert error[1] < error[0]



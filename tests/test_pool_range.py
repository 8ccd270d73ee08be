"""PooledRangeTop: a classifier's pooled features (synthetic ranges) get the top of the pool's input."""

from __future__ import annotations

import numpy as np
import onnx
from _util import compile_state, run
from dfq_onnx.models import builders
from dfq_onnx.passes.calibrate import Calibrate
from dfq_onnx.passes.emit_qdq import EmitQDQ
from dfq_onnx.passes.fold_bn import FoldBatchNorm
from dfq_onnx.passes.normalize import Normalize
from dfq_onnx.passes.plan_uniform import UniformPlan
from dfq_onnx.passes.pool_range import PooledRangeTop, head_inputs, pooled_tensors
from dfq_onnx.passes.quant_groups import FindQuantGroups
from onnx import helper

from dfq_onnx.core import ir
from dfq_onnx.core.options import QuantizeOptions
from dfq_onnx.core.pass_base import run_passes
from dfq_onnx.core.state import Range
from dfq_onnx.core.target import load_target
from dfq_onnx.pipeline import default_pipeline

FRONT = [Normalize(), FoldBatchNorm(), FindQuantGroups()]


def _classifier() -> onnx.ModelProto:
    return builders.with_data_bn_stats(builders.conv_bn_relu_residual(c=8, hw=8, classes=10))


def _gated() -> onnx.ModelProto:
    """A squeeze-excitation gate before the classifier head: two pools, only the second is the head's."""
    rng = np.random.default_rng(0)
    w = helper.make_tensor("w", onnx.TensorProto.FLOAT, [4, 3, 3, 3], rng.normal(0, 0.3, 108).tolist())
    fc = helper.make_tensor("fc", onnx.TensorProto.FLOAT, [5, 4], rng.normal(0, 0.5, 20).tolist())
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("GlobalAveragePool", ["r"], ["gate_pool"]),
             helper.make_node("Sigmoid", ["gate_pool"], ["gate"]),
             helper.make_node("Mul", ["r", "gate"], ["gated"]),
             helper.make_node("ReduceMean", ["gated"], ["feat"], axes=[2, 3], keepdims=0),
             helper.make_node("Gemm", ["feat", "fc"], ["y"], transB=1)]
    graph = helper.make_graph(nodes, "gated", [helper.make_tensor_value_info("x", 1, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("y", 1, ["N", 5])], [w, fc])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_pools_and_the_heads_features_are_found():
    state = compile_state(_classifier(), FRONT)
    assert pooled_tensors(state.graph) == [("gap_out", "relu2_out"), ("flat_out", "relu2_out")]
    assert {"gap_out", "flat_out"} <= head_inputs(state.graph)
    gated = compile_state(_gated(), FRONT)
    assert [p for p, _ in pooled_tensors(gated.graph)] == ["gate_pool", "feat"]
    assert "feat" in head_inputs(gated.graph) and "gate_pool" not in head_inputs(gated.graph)


def test_only_the_top_of_the_heads_synthetic_pool_ranges_moves():
    def ranges(source: str, top: float = 0.3) -> dict:
        return {"relu2_out": Range(0.0, 5.0, source), "gap_out": Range(0.0, top, source),
                "flat_out": Range(0.0, top, source)}

    state = compile_state(_classifier(), FRONT)
    state.ranges = ranges("synthetic")
    run_passes([PooledRangeTop()], state)
    assert state.ranges["gap_out"] == Range(0.0, 5.0, "synthetic+pool-top") == state.ranges["flat_out"]
    assert state.ranges["relu2_out"] == Range(0.0, 5.0, "synthetic")
    assert state.report.notes["pooled_range_top"]["gap_out"]["measured"] == [0.0, 0.3]
    again = compile_state(_classifier(), FRONT)                   # deterministic
    again.ranges = ranges("synthetic")
    assert run_passes([PooledRangeTop()], again).ranges == state.ranges
    data = compile_state(_classifier(), FRONT)                    # the user's data is not second-guessed
    data.ranges = ranges("data")
    assert run_passes([PooledRangeTop()], data).ranges == ranges("data")
    wide = compile_state(_classifier(), FRONT)                    # measured above the input's top: kept
    wide.ranges = ranges("synthetic", top=6.0)
    assert run_passes([PooledRangeTop()], wide).ranges["gap_out"] == Range(0.0, 6.0, "synthetic")


def test_a_gate_pool_is_left_as_measured():
    state = compile_state(_gated(), FRONT)
    state.ranges = {"r": Range(0.0, 4.0, "synthetic"), "gated": Range(0.0, 3.0, "synthetic"),
                    "gate_pool": Range(0.0, 0.5, "synthetic"), "feat": Range(0.0, 0.2, "synthetic")}
    run_passes([PooledRangeTop()], state)
    assert state.ranges["gate_pool"] == Range(0.0, 0.5, "synthetic")
    assert state.ranges["feat"] == Range(0.0, 3.0, "synthetic+pool-top")


def test_spatially_consistent_inputs_are_no_longer_clipped_at_the_pool():
    """Calibrated on inputs whose channels have zero spatial mean (synthetic-like: features average out),
    held-out inputs with a per-channel offset (real-like: a feature persists over the image) overflow the
    pooled range; with the rule almost none of their pooled features is clipped (those beyond the input's
    calibrated range can be) and the argmax agrees more."""
    model = _classifier()
    rng = np.random.default_rng(0)
    calib = rng.standard_normal((64, 8, 8, 8)).astype(np.float32)
    calib -= calib.mean(axis=(2, 3), keepdims=True)
    held = (rng.standard_normal((256, 8, 8, 8)) * 0.5 + rng.normal(0, 1.5, (256, 8, 1, 1))).astype(np.float32)
    ref = run(model, {"input": held})[0]
    clipped, agree = [], []
    for rule in ([], [PooledRangeTop()]):
        state = compile_state(model, FRONT, target="openvino", synth_views=1)
        state.calib = {"input": calib}
        run_passes([Calibrate(), *rule, UniformPlan()], state)
        pooled = run(model_upto(model, "gap_out"), {"input": held})[0]
        clipped.append(float(np.mean(pooled > state.ranges["gap_out"].hi)))
        run_passes([EmitQDQ()], state)
        q = run(ir.to_model(state.graph), {"input": held})[0]
        agree.append(float(np.mean(q.argmax(axis=1) == ref.argmax(axis=1))))
    assert clipped[0] > 0.2 and clipped[1] < 0.01
    assert agree[1] > agree[0]


def model_upto(model: onnx.ModelProto, name: str) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    del out.graph.output[:]
    out.graph.output.append(helper.make_tensor_value_info(name, 1, None))
    return out


def test_pipeline_runs_the_rule_after_the_score_prior_for_synthetic_calibration_only():
    target = load_target("ort-cpu")
    names = {c: [repr(p) for p in default_pipeline(target, QuantizeOptions(calib=c))]
             for c in ("synthetic", "analytic", "noise")}
    assert names["synthetic"].index("PooledRangeTop") == names["synthetic"].index("ScoreTopPrior") + 1
    assert "PooledRangeTop" not in names["analytic"] + names["noise"]

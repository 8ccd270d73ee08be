"""PooledRangeTop: a classifier head's synthetic pooled-feature ranges are raised by its scores' shortfall."""

from __future__ import annotations

import numpy as np
import onnx
from _util import compile_state, model_upto, run
from dfq_onnx.models import builders
from dfq_onnx.passes.calibrate import Calibrate
from dfq_onnx.passes.emit_qdq import EmitQDQ
from dfq_onnx.passes.fold_bn import FoldBatchNorm
from dfq_onnx.passes.normalize import Normalize
from dfq_onnx.passes.plan_uniform import UniformPlan
from dfq_onnx.passes.pool_range import PooledRangeTop, head_inputs, pooled_tensors
from dfq_onnx.passes.quant_groups import FindQuantGroups
from dfq_onnx.passes.score_prior import ScoreTopPrior
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
    assert head_inputs(state.graph)["gap_out"] == ["output"] == head_inputs(state.graph)["flat_out"]
    gated = compile_state(_gated(), FRONT)
    assert [p for p, _ in pooled_tensors(gated.graph)] == ["gate_pool", "feat"]
    assert "feat" in head_inputs(gated.graph) and "gate_pool" not in head_inputs(gated.graph)


SHORTFALL = {"output": {"measured": [-0.3, 0.5], "prior_top": 2.0, "top": 2.0}}    # scores 4x short


def _with_ranges(model, ranges: dict, notes: dict | None = SHORTFALL):
    state = compile_state(model, FRONT)
    state.ranges = dict(ranges)
    if notes is not None:
        state.report.notes["score_top_prior"] = notes
    return run_passes([PooledRangeTop()], state)


def test_the_heads_pool_top_is_raised_by_the_scores_shortfall_capped_at_its_input():
    def ranges(source: str, top: float = 0.3, input_top: float = 5.0) -> dict:
        return {"relu2_out": Range(0.0, input_top, source), "gap_out": Range(-0.1, top, source),
                "flat_out": Range(-0.1, top, source)}

    state = _with_ranges(_classifier(), ranges("synthetic"))
    raised = Range(-0.1, 0.3 * 4.0, "synthetic+pool-top")
    assert state.ranges["gap_out"] == raised == state.ranges["flat_out"]
    assert state.ranges["relu2_out"] == Range(0.0, 5.0, "synthetic")
    note = state.report.notes["pooled_range_top"]["gap_out"]
    assert note["measured"] == [-0.1, 0.3] and note["score_shortfall"] == 4.0
    assert _with_ranges(_classifier(), ranges("synthetic")).ranges == state.ranges      # deterministic
    capped = _with_ranges(_classifier(), ranges("synthetic", input_top=0.8))   # the bound
    assert capped.ranges["gap_out"] == Range(-0.1, 0.8, "synthetic+pool-top")
    assert _with_ranges(_classifier(), ranges("data")).ranges == ranges("data")            # the user's data
    none = _with_ranges(_classifier(), ranges("synthetic"), notes=None)                   # no score evidence
    assert none.ranges == ranges("synthetic")
    assert "no BN prior" in none.report.notes["pooled_range_top"]["gap_out"]


def test_a_gate_pool_is_left_as_measured():
    notes = {"y": {"measured": [-0.3, 0.5], "prior_top": 2.0, "top": 2.0}}
    state = _with_ranges(_gated(), {"r": Range(0.0, 4.0, "synthetic"), "gated": Range(0.0, 3.0, "synthetic"),
                                    "gate_pool": Range(0.0, 0.5, "synthetic"),
                                    "feat": Range(0.0, 0.2, "synthetic")}, notes)
    assert state.ranges["gate_pool"] == Range(0.0, 0.5, "synthetic")
    assert state.ranges["feat"] == Range(0.0, 0.8, "synthetic+pool-top")


def test_spatially_consistent_inputs_are_clipped_less_at_the_pool():
    """Calibrated on inputs whose channels have zero spatial mean (synthetic-like: features average out,
    the scores stay low), held-out inputs with a per-channel offset (real-like: a feature persists over
    the image) overflow the pooled range; with ScoreTopPrior's shortfall applied to the pool, fewer of
    their pooled features are clipped and the argmax agrees more with FP32."""
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
        run_passes([Calibrate(), ScoreTopPrior(), *rule, UniformPlan()], state)
        pooled = run(model_upto(model, "gap_out"), {"input": held})[0]
        clipped.append(float(np.mean(pooled > state.ranges["gap_out"].hi)))
        run_passes([EmitQDQ()], state)
        q = run(ir.to_model(state.graph), {"input": held})[0]
        agree.append(float(np.mean(q.argmax(axis=1) == ref.argmax(axis=1))))
    assert clipped[1] < clipped[0] / 2
    assert agree[1] > agree[0]


def test_pipeline_runs_the_rule_after_the_score_prior_for_synthetic_calibration_only():
    target = load_target("ort-cpu")
    names = {c: [repr(p) for p in default_pipeline(target, QuantizeOptions(calib=c))]
             for c in ("synthetic", "analytic", "noise")}
    assert names["synthetic"].index("PooledRangeTop") == names["synthetic"].index("ScoreTopPrior") + 1
    assert "PooledRangeTop" not in names["analytic"] + names["noise"]

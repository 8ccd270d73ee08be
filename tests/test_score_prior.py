"""ScoreTopPrior: the top of classifier score ranges from synthetic samples is raised to the BN prior."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from _util import compile_state, run
from dfq_onnx.models import builders
from dfq_onnx.passes.calibrate import Calibrate
from dfq_onnx.passes.emit_qdq import EmitQDQ
from dfq_onnx.passes.fold_bn import FoldBatchNorm
from dfq_onnx.passes.normalize import Normalize
from dfq_onnx.passes.plan_uniform import UniformPlan
from dfq_onnx.passes.quant_groups import FindQuantGroups
from dfq_onnx.passes.score_prior import ScoreTopPrior, score_tensors

from dfq_onnx.core import ir
from dfq_onnx.core.options import QuantizeOptions
from dfq_onnx.core.pass_base import run_passes
from dfq_onnx.core.state import Range
from dfq_onnx.core.target import load_target
from dfq_onnx.pipeline import default_pipeline

FRONT = [Normalize(), FoldBatchNorm(), FindQuantGroups()]


def _classifier(seed: int = 0) -> onnx.ModelProto:
    """A trained-like classifier: BN statistics fitted to its N(0, 1) inputs, 10 classes."""
    return builders.with_data_bn_stats(builders.conv_bn_relu_residual(c=8, hw=8, classes=10, seed=seed))


def _with_softmax(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    out.graph.output[0].name = "probs"
    out.graph.node.append(onnx.helper.make_node("Softmax", ["output"], ["probs"], name="softmax", axis=1))
    return out


def test_score_tensors_are_classifier_outputs_and_what_softmax_reads():
    state = compile_state(_with_softmax(_classifier()), FRONT)
    assert score_tensors(state.graph) == ["probs", "output"]
    conv = compile_state(builders.conv_bn_relu(), FRONT)          # [N, C, H, W] output: no scores
    assert score_tensors(conv.graph) == []


def test_only_the_top_of_synthetic_score_ranges_moves():
    state = compile_state(_classifier(), FRONT)
    state.ranges = {"output": Range(-0.3, 0.4, "synthetic")}
    run_passes([ScoreTopPrior()], state)
    new = state.ranges["output"]
    assert new.lo == -0.3 and new.hi > 0.4 and new.source == "synthetic+bn-top"
    note = state.report.notes["score_top_prior"]["output"]
    assert note["prior_top"] == new.hi and note["measured"] == [-0.3, 0.4]
    again = compile_state(_classifier(), FRONT)                   # deterministic: same prior
    again.ranges = {"output": Range(-0.3, 0.4, "synthetic")}
    assert run_passes([ScoreTopPrior()], again).ranges["output"] == new
    wide = compile_state(_classifier(), FRONT)
    wide.ranges = {"output": Range(-0.3, 1e3, "synthetic")}      # measured above the prior: kept
    assert run_passes([ScoreTopPrior()], wide).ranges["output"] == Range(-0.3, 1e3, "synthetic")
    data = compile_state(_classifier(), FRONT)
    data.ranges = {"output": Range(-0.3, 0.4, "data")}            # the user's data is not second-guessed
    assert run_passes([ScoreTopPrior()], data).ranges["output"] == Range(-0.3, 0.4, "data")


def test_scores_the_bn_statistics_do_not_reach_are_left_with_the_reason():
    state = compile_state(builders.constant_weights(), FRONT)     # no BN at all
    state.ranges = {"output": Range(-1.0, 1.0, "synthetic")}
    result = run_passes([ScoreTopPrior()], state)
    assert state.ranges["output"] == Range(-1.0, 1.0, "synthetic")
    assert "do not reach" in state.report.notes["score_top_prior"]["output"]
    assert "0/1" in result.report.passes[-1]["summary"]


@pytest.mark.parametrize("seed", [0, 1])
def test_prior_removes_top_clipping_and_restores_the_argmax(seed):
    """Calibrated on the 32 least confident of 1,024 inputs (synthetic-like: low top scores), the
    quantized classifier clips the top score of most held-out inputs; with the prior none, and its
    argmax agrees with FP32 on more of them. (On a target that quantizes the graph output: ORT CPU
    keeps a Gemm's graph output float.)"""
    model = _classifier(seed)
    x = np.random.default_rng(seed).standard_normal((1024, 8, 8, 8)).astype(np.float32)
    y = run(model, {"input": x})[0]
    calib, held, ref = x[np.argsort(y[:512].max(axis=1))[:32]], x[512:], y[512:]
    clipped, agree = [], []
    for prior in ([], [ScoreTopPrior()]):
        state = compile_state(model, FRONT, target="openvino", synth_views=1)
        state.calib = {"input": calib}
        run_passes([Calibrate(), *prior, UniformPlan(), EmitQDQ()], state)
        q = run(ir.to_model(state.graph), {"input": held})[0]
        clipped.append(float(np.mean(ref.max(axis=1) > state.ranges["output"].hi)))
        agree.append(float(np.mean(q.argmax(axis=1) == ref.argmax(axis=1))))
    assert clipped[0] > 0.9 and clipped[1] == 0.0
    assert agree[1] > agree[0] + 0.02


def test_pipeline_runs_the_prior_for_synthetic_calibration_only(tmp_path):
    target = load_target("ort-cpu")
    names = {c: [repr(p) for p in default_pipeline(target, QuantizeOptions(calib=c))]
             for c in ("synthetic", "analytic", "noise")}
    syn = names["synthetic"]    # the prior reads the final ranges: after Calibrate, ChooseTwinRanges,
    assert syn.index("ScoreTopPrior") == syn.index("HeadMaxRanges") + 1 \
        == syn.index("FloatAssumedInput") + 2 == syn.index("CoverInferredInput") + 3 \
        == syn.index("ChooseTwinRanges") + 4 == syn.index("Calibrate") + 5
    assert "ScoreTopPrior" not in names["analytic"] + names["noise"]

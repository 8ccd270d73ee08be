"""MeasureInputMoments and the moment-weighted low-bit weights: measured E[x_j^2], their layout against
each weight, and the probe's slots = Emit's weights when the moments weigh the clip search."""

from __future__ import annotations

import copy

import numpy as np
import onnx_graphsurgeon as gs
import pytest
from _util import compile_state, normal_feeds, state_model
from dfq_onnx.models import builders
from dfq_onnx.passes.calibrate import Calibrate
from dfq_onnx.passes.emit_qdq import EmitQDQ
from dfq_onnx.passes.fold_bn import FoldBatchNorm
from dfq_onnx.passes.input_moments import MeasureInputMoments
from dfq_onnx.passes.normalize import Normalize
from dfq_onnx.passes.quant_groups import FindQuantGroups

from dfq_onnx.backends import input_moments as im
from dfq_onnx.backends import runtime
from dfq_onnx.core import ir
from dfq_onnx.core.gptq import LaidHessian
from dfq_onnx.core.graph_utils import node_label
from dfq_onnx.core.report import Report
from dfq_onnx.core.state import BitPlan, LayerSpec
from dfq_onnx.sensitivity import probe


def _state(model, full: bool = False, **options):
    return compile_state(model, [Normalize(21), FoldBatchNorm(), FindQuantGroups(), Calibrate(),
                                 MeasureInputMoments(full=full)], calib_samples=24, **options)


@pytest.mark.parametrize("name", ["conv_bn_relu_residual", "gemm_bn", "matmul_bn"])
def test_moments_are_the_mean_square_per_input_channel(name):
    state = _state(builders.GOOD_BUILDERS[name]())
    nodes = {node_label(n): n for n in state.graph.nodes}
    assert state.input_moments
    for label, m in state.input_moments.items():
        x = nodes[label].inputs[0]
        sess = runtime.session(runtime.observer_model(state.graph, [x.name]))
        arr = np.asarray(sess.run(None, {k: np.asarray(v) for k, v in state.calib.items()})[0], np.float64)
        axis = 1 if nodes[label].op == "Conv" else arr.ndim - 1
        want = np.mean(np.moveaxis(arr, axis, -1).reshape(-1, arr.shape[axis]) ** 2, axis=0)
        np.testing.assert_allclose(m, want, rtol=1e-4, err_msg=label)


def _node(op, w_shape, **attrs):
    x = gs.Variable("x", np.float32, None)
    return gs.Node(op, inputs=[x, gs.Constant("w", np.zeros(w_shape, np.float32))], attrs=attrs)


def test_importance_lays_the_moments_out_against_each_weight():
    m = np.arange(1.0, 7.0)                                   # 6 input channels / features
    spec = LayerSpec("n", "Conv", "weighted", "w")
    grouped = im.importance(_node("Conv", (4, 3, 1, 1), group=2), spec, {"n": m})
    assert grouped.shape == (4, 3, 1, 1)
    np.testing.assert_array_equal(grouped[:, :, 0, 0], [[1, 2, 3], [1, 2, 3], [4, 5, 6], [4, 5, 6]])
    dw = im.importance(_node("Conv", (6, 1, 3, 3), group=6), spec, {"n": m})
    np.testing.assert_array_equal(dw[:, 0, 0, 0], m)
    np.testing.assert_array_equal(im.importance(_node("MatMul", (6, 2)), spec, {"n": m}), m[:, None])
    np.testing.assert_array_equal(im.importance(_node("Gemm", (2, 6), transB=1), spec, {"n": m}), m[None, :])
    assert im.importance(_node("MatMul", (5, 2)), spec, {"n": m}) is None      # does not fit
    assert im.importance(_node("MatMul", (6, 2)), spec, {}) is None


def _emit(state, plan: dict):
    s = copy.copy(state)
    s.graph, s.report = ir.copy_graph(state.graph), Report()
    s.plan = BitPlan({g.id: plan.get(g.id, (8, 8)) for g in state.groups})
    EmitQDQ().run(s)
    return state_model(s)


@pytest.mark.parametrize("full", [False, True])         # E[x_j^2] (--weight-clip) / H = E[x x^T] (GPTQ)
@pytest.mark.parametrize("name", ["conv_bn_relu_residual", "gemm_bn", "matmul_bn"])
def test_probe_slots_are_emits_weighted_low_bit_weights(name, full):
    model = builders.GOOD_BUILDERS[name]()
    state, feeds = _state(model, full), normal_feeds(model, n=8, seed=3)
    assert any(isinstance(m, LaidHessian) for m in state.input_moments.values()) == full
    kw = dict(input_moments=state.input_moments)
    pm = probe.build_probe(state.graph, state.spec, state.groups, state.ranges, state.target, (3, 8), 8, **kw)
    plain = probe.build_probe(state.graph, state.spec, state.groups, state.ranges, state.target, (3, 8), 8)
    config = {g: 3 for g in pm.selects}
    want = probe.session(_emit(state, {g: (3, 8) for g in pm.selects}), optimize=False).run(None, feeds)
    got = probe.Probe(pm, optimize=False).run(config, feeds)
    for w, g in zip(want, got):     # same float ops on the same values: bit-exact
        np.testing.assert_array_equal(g, w)
    other = probe.Probe(plain, optimize=False).run(config, feeds)
    assert any(not np.array_equal(a, b) for a, b in zip(got, other))      # the moments moved a weight


def test_moments_read_the_samples_calibrate_measured(monkeypatch):
    """Where Calibrate's work budget measured the first 8 of 24 synthetic samples (a large input: ISNet at
    1024 x 1024 measures 17 of 64), the moments -- and bias correction's means, the same pass -- are
    measured on those 8, not on all 24 (main ran every sample: CorrectBias 153 s on ISNet)."""
    from dfq_onnx.passes import calibrate

    from dfq_onnx.backends import budget
    from dfq_onnx.core.pass_base import run_passes

    model = builders.conv_bn_relu(c_in=3, hw=8)                # an image input [N, 3, 8, 8]: views
    state = compile_state(model, [Normalize(21), FoldBatchNorm(), FindQuantGroups()])
    state.calib = normal_feeds(model, n=24, seed=31)          # as Synthesize leaves its samples
    monkeypatch.setattr(calibrate, "calibration_rows",          # a work budget of 8 rows
                        lambda n, views, e: budget.calibration_rows(n, views, e, work=8 * e))
    run_passes([Calibrate(), MeasureInputMoments()], state)
    assert state.report.notes["calibration"]["synthetic"] == {"samples": 24, "rows": 8,
                                                              "tensors": len(state.spec.act_tensors)}
    nodes = {node_label(n): n for n in state.graph.nodes}
    label, m = next(iter(state.input_moments.items()))
    x = nodes[label].inputs[0]
    arr = np.asarray(runtime.session(runtime.observer_model(state.graph, [x.name])).run(
        None, {k: np.asarray(v) for k, v in state.calib.items()})[0], np.float64)
    per_row = np.mean(np.moveaxis(arr, 1, -1).reshape(24, -1, arr.shape[1]) ** 2, axis=1)
    np.testing.assert_allclose(m, per_row[:8].mean(0), rtol=1e-4)
    assert not np.allclose(m, per_row.mean(0), rtol=1e-3)

"""FoldBatchNorm: structure, numerical equivalence against ORT on the FP32 graph, skips and idempotence."""

from __future__ import annotations

import numpy as np
import pytest
from _util import compile_state, normal_feeds, run, state_model
from dfq_onnx.models import builders
from dfq_onnx.passes.fold_bn import FoldBatchNorm
from dfq_onnx.passes.normalize import Normalize
from onnx.numpy_helper import to_array

# Folding changes the float rounding only: W' x + b' vs gamma (W x - mean) / std + beta.
ATOL, RTOL = 1e-4, 1e-4


def _fold(model):
    return compile_state(model, [Normalize(), FoldBatchNorm()])


def _ops(state):
    return [n.op for n in state.graph.nodes]


@pytest.mark.parametrize("model, folded_op", [
    (builders.conv_bn_relu(), "Conv"),
    (builders.gemm_bn(trans_b=0), "Gemm"),
    (builders.gemm_bn(trans_b=1), "Gemm"),
    (builders.gemm_bn(bias=False), "Gemm"),
    (builders.matmul_bn(), "Gemm"),          # MatMul becomes Gemm to carry the bias
    (builders.convtranspose_bn(), "ConvTranspose"),   # output channels on weight axis 1
], ids=["conv", "gemm-transB0", "gemm-transB1", "gemm-nobias", "matmul", "convtranspose"])
def test_fold_structure_and_numerics(model, folded_op):
    state = _fold(model)
    assert "BatchNormalization" not in _ops(state) and "MatMul" not in _ops(state)
    layer = next(n for n in state.graph.nodes if n.op == folded_op)
    assert len(layer.inputs) == 3 and layer.inputs[2].values.dtype == np.float32   # bias present
    assert state.report.passes[-1]["modified"] is True
    feeds = normal_feeds(model, n=16, seed=1)
    np.testing.assert_allclose(run(state_model(state), feeds)[0], run(model, feeds)[0], atol=ATOL, rtol=RTOL)


def test_bias_created_where_absent():
    state = _fold(builders.conv_bn_relu())   # conv1 has no bias
    conv1 = next(n for n in state.graph.nodes if n.name == "conv1")
    assert conv1.inputs[2].name == "conv1.bias_folded"
    assert conv1.inputs[2].shape == (8,)     # c_mid output channels
    assert conv1.outputs[0].name == "bn1_out"


def test_matmul_becomes_gemm_with_transb_0():
    state = _fold(builders.matmul_bn(k=16, n=8))
    (gemm,) = state.graph.nodes
    assert gemm.op == "Gemm" and gemm.attrs == {"transB": 0} and gemm.inputs[1].shape == (16, 8)


def test_more_layers_fold_numerically():
    for model in (builders.conv_bn_relu_residual(), builders.concat_branches(), builders.conv_clip6()):
        state = _fold(model)
        assert "BatchNormalization" not in _ops(state), model.graph.name
        feeds = normal_feeds(model, n=8, seed=2)
        folded = run(state_model(state), feeds)[0]
        np.testing.assert_allclose(folded, run(model, feeds)[0], atol=ATOL, rtol=RTOL)


def test_shared_weight_not_folded_and_skip_recorded():
    state = _fold(builders.shared_weight())
    assert _ops(state).count("BatchNormalization") == 1
    assert state.bn_stats == {}
    (skip,) = state.report.skipped
    assert skip["node"] == "bn" and "conv_a" in skip["reason"] and "weight" in skip["reason"]
    assert state.report.passes[-1]["modified"] is False


def test_grouped_convtranspose_not_folded_and_skip_recorded():
    state = _fold(builders.convtranspose_bn(group=2))
    assert [n.op for n in state.graph.nodes] == ["ConvTranspose", "BatchNormalization"]
    (skip,) = state.report.skipped
    assert skip["node"] == "bn" and "'up'" in skip["reason"]


def test_second_run_reports_not_modified():
    state = _fold(builders.conv_bn_relu_residual())
    first_stats = dict(state.bn_stats)
    result = FoldBatchNorm().run(state)
    assert result.modified is False
    assert state.bn_stats.keys() == first_stats.keys()


def test_bn_stats_kept_under_the_layer_key():
    model = builders.conv_bn_relu_residual()
    inits = {t.name: t for t in model.graph.initializer}
    state = _fold(model)
    assert set(state.bn_stats) == {"conv1", "conv2"}
    stats = state.bn_stats["conv2"]
    assert stats.layer == "conv2" and stats.tensor == "bn2_out" and stats.eps == pytest.approx(1e-5)
    np.testing.assert_array_equal(stats.mean, to_array(inits["bn2.mean"]))
    np.testing.assert_array_equal(stats.var, to_array(inits["bn2.var"]))
    np.testing.assert_array_equal(stats.gamma, to_array(inits["bn2.scale"]))
    np.testing.assert_array_equal(stats.beta, to_array(inits["bn2.bias"]))


def test_bn_stats_key_of_unnamed_layer_is_consistent():
    model = builders.conv_bn_relu()
    for node in model.graph.node:
        node.name = ""
    state = _fold(model)
    ((key, stats),) = state.bn_stats.items()
    assert stats.layer == key


def test_a_bn_after_an_activation_stays_and_keeps_its_statistics():
    """Conv - Relu - BN (CREPE's blocks): no layer absorbs the BN, the graph is left as it was, and its
    statistics are kept by the BN's name for synthesis (not in bn_stats, which other passes read as a
    folded layer's N(beta, gamma^2) output)."""
    from dfq_onnx.models import signal_builders

    model = signal_builders.waveform_classifier(post_bn=True)
    state = _fold(model)
    assert _ops(state).count("BatchNormalization") == 1 and state.bn_stats == {}
    kept = state.bn_kept["bn1"]
    assert kept.tensor == "b1" and kept.layer == "bn1"
    np.testing.assert_array_equal(kept.mean, to_array(next(t for t in model.graph.initializer
                                                           if t.name == "bn1.mean")).astype(np.float64))
    assert state.report.notes["bn_kept"] == ["bn1"]
    assert state.report.passes[-1]["modified"] is False

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

"""Chunked forward passes: the per-row activation footprint, the chunk-size rule, and outputs that are
byte-identical whatever the chunk size (min/max, percentile, synthetic samples with views)."""

from __future__ import annotations

import numpy as np
import pytest
from _util import compile_state
from dfq_onnx.models import builders
from dfq_onnx.passes.fold_bn import FoldBatchNorm
from dfq_onnx.passes.normalize import Normalize

import dfq_onnx
from dfq_onnx.backends import observers, runtime
from dfq_onnx.backends.chunks import ARENA, live_bytes_per_row, rows_per_chunk
from dfq_onnx.core import ir


@pytest.fixture
def graph():
    return compile_state(builders.conv_bn_relu(c_in=3, c_mid=8, c_out=4, hw=8),
                         [Normalize(), FoldBatchNorm()]).graph


def test_live_bytes_follow_the_topological_order(graph):
    # float32 input 3x8x8 (alive throughout) + conv1 (BN folded) out 8x8x8 + relu1 out 8x8x8 at the
    # Relu; the conv1 output dies there, so conv2's 4x8x8 output never meets it
    assert live_bytes_per_row(graph) == 4 * (192 + 512 + 512)
    # a held tensor (an observer output) stays alive to the end, where conv2's output joins it
    assert live_bytes_per_row(graph, held=["bn1_out"]) == 4 * (192 + 512 + 512 + 256)


def test_rows_per_chunk_fits_the_budget(graph):
    per_row = ARENA * live_bytes_per_row(graph)
    assert rows_per_chunk(graph, budget_bytes=5 * per_row) == 5
    assert rows_per_chunk(graph, budget_bytes=5 * per_row - 1) == 4
    assert rows_per_chunk(graph, budget_bytes=1) == 1                       # at least one row


def test_range_observer_matches_numpy_and_reports_infinities(graph):
    tensors = ["input", "bn1_out", "output"]
    sess = runtime.session(observers.range_model(graph, tensors))
    x = np.random.default_rng(0).standard_normal((5, 3, 8, 8)).astype(np.float32)
    got = observers.ranges_of(sess.run(None, {"input": x}), tensors)
    ref = runtime.session(runtime.observer_model(graph, tensors)).run(None, {"input": x})
    assert got == {t: (float(r.min()), float(r.max())) for t, r in zip(tensors, ref)}
    x[2, 1, 3, 3] = np.inf
    got = observers.ranges_of(sess.run(None, {"input": x}), tensors)
    assert got["input"][1] == np.inf        # Calibrate keeps such a tensor float


def _bytes(model) -> bytes:
    return ir.serialize(model)


@pytest.mark.parametrize("opts", [
    {"calib": "noise", "calib_samples": 13},
    {"calib": "noise", "calib_samples": 13, "act_range": "percentile", "percentile": 99.0},
    {"calib": "synthetic", "synth_samples": 3, "synth_steps": 2, "synth_views": 4, "use_cache": False},
], ids=["minmax", "percentile", "synthetic-views"])
def test_output_is_byte_identical_whatever_the_chunk_size(opts):
    model = builders.conv_bn_relu_residual()
    outs = {b: _bytes(dfq_onnx.quantize(model, calib_batch=b, progress=False, **opts)[0])
            for b in (1, 5, None)}
    assert outs[1] == outs[5] == outs[None]


def test_static_batch_models_pad_their_last_chunk():
    model = builders.conv_bn_relu(hw=8)
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 4
    model.graph.output[0].type.tensor_type.shape.dim[0].dim_value = 4
    a, report = dfq_onnx.quantize(model, calib="noise", calib_samples=10, progress=False,
                                  act_bits=8)             # calibration only (no activation scoring)
    assert report.forward_passes == 3                     # 10 rows in calls of the static 4


def test_static_batch_and_padding_to_it():
    import onnx_graphsurgeon as gs

    from dfq_onnx.backends.chunks import pad_rows, static_batch

    fixed = gs.Graph(inputs=[gs.Variable("a", np.float32, ["N", 3]), gs.Variable("x", np.float32, [4, 3])])
    assert static_batch(fixed) == 4
    assert static_batch(gs.Graph(inputs=[gs.Variable("x", np.float32, ["N", 3])])) is None
    chunk = {"x": np.arange(6, dtype=np.float32).reshape(2, 3)}
    padded = pad_rows(chunk, 4)["x"]
    assert padded.shape == (4, 3) and (padded[:2] == chunk["x"]).all()
    assert (padded[2:] == chunk["x"][-1]).all()
    assert pad_rows(chunk, 2)["x"] is chunk["x"]                  # a full chunk is left as it is

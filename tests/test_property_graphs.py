"""Property test: random small graphs (models/random_graph.py: Conv/BN/ReLU/Clip/Add/Concat/Pool/Gemm/
Reshape, random shapes and weights) go through the default W8A8 pipeline; the output passes the full
checker, runs in ONNX Runtime and matches FP32 within an SQNR bound.

The bound: one 8-bit per-tensor quantizer on Gaussian-like data costs ~38 dB (49.9 dB minus a ~12 dB
crest factor); a graph here has up to ~12 quantizers (-11 dB when their noise adds) and analytic ranges
of standardized inputs can be ~3x wider than the data seen at test time (-10 dB): 38 - 11 - 10 ~ 17 dB,
so 12 dB leaves a margin for sampling noise. Over 800 random draws the worst case was 13.4 dB
(a GlobalAveragePool -> Gemm head read straight off the input, analytic ranges), after fixing the one
failure fuzzing found (the explicit example below: 0 dB before the fix, 30 dB after).
BN statistics are refitted to the graph's own activations (what a trained network's are), since the
analytic ranges read them. Noise calibration uses 256 samples: on a 1x1 map 64 samples put the range at
~2.4 sigma and the fresh test inputs clip beyond it (11.6 dB seen once in 500 draws at 64 samples; the
same graph gives 27.7 dB at 1024) -- a sample-size effect, not a compiler bug.
"""

from __future__ import annotations

import numpy as np
import onnx
from _util import run
from dfq_onnx.models.builders import with_data_bn_stats
from dfq_onnx.models.random_graph import OPS, random_model
from hypothesis import example, given, settings
from hypothesis import strategies as st

import dfq_onnx

SQNR_BOUND_DB = 12.0


def _sqnr_db(ref: np.ndarray, got: np.ndarray) -> float:
    noise = float(np.sum((ref.astype(np.float64) - got) ** 2))
    return float("inf") if noise == 0 else 10 * np.log10(float(np.sum(ref.astype(np.float64) ** 2)) / noise)


@given(ops=st.lists(st.sampled_from(OPS), min_size=1, max_size=8), seed=st.integers(0, 2**16),
       c=st.integers(1, 4), hw=st.integers(1, 7), calib=st.sampled_from(["analytic", "noise"]))
@example(ops=["reshape", "conv", "concat", "conv", "relu", "maxpool", "clip", "maxpool"], seed=195, c=1, hw=1,
         calib="analytic")   # found by fuzzing: 3x3 conv on a 1x1 map, analytic range ~200x too wide (0 dB)
@settings(max_examples=200)
def test_random_graph_quantizes_and_matches_fp32(ops, seed, c, hw, calib):
    model = with_data_bn_stats(random_model(ops, seed=seed, c=c, hw=hw), n=64, seed=seed)
    onnx.checker.check_model(model, full_check=True)
    quantized, report = dfq_onnx.quantize(model, calib=calib, calib_samples=256, seed=seed, progress=False)
    onnx.checker.check_model(quantized, full_check=True)
    x = np.random.default_rng(seed + 1).standard_normal((64, c, hw, hw)).astype(np.float32)
    ref, got = run(model, {"input": x})[0], run(quantized, {"input": x})[0]
    assert got.shape == ref.shape and np.all(np.isfinite(got))
    n_weighted = sum(op in ("Conv", "Gemm") for op in (n.op_type for n in model.graph.node))
    assert len(report.layers) <= n_weighted     # dead branches are dropped, nothing is invented
    if np.sum(ref.astype(np.float64) ** 2) > 1e-12:
        assert _sqnr_db(ref, got) >= SQNR_BOUND_DB, (ops, calib)

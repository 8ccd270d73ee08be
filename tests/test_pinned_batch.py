"""A batch the exporter fixed inside the graph (input axis 0 dynamic, every output's axis 0 is 1) is a
static batch of 1: calibration and scoring feed one row per call."""

from __future__ import annotations

import numpy as np
import onnx
from _util import run
from dfq_onnx.models import builders

import dfq_onnx
from dfq_onnx.backends.chunks import static_batch
from dfq_onnx.core import ir


def test_outputs_of_batch_one_pin_a_dynamic_input_batch():
    assert static_batch(ir.to_graph(builders.pinned_batch())) == 1
    assert static_batch(ir.to_graph(builders.conv_bn_relu())) is None


def test_a_model_with_a_pinned_batch_compiles_with_no_data():
    model = builders.pinned_batch()
    out, _ = dfq_onnx.quantize(model, progress=False, use_cache=False, latency_check=False)
    onnx.checker.check_model(out, full_check=True)
    x = np.random.default_rng(1).standard_normal((1, 16)).astype(np.float32)
    want, got = run(model, {"input": x})[0], run(out, {"input": x})[0]
    assert np.abs(got - want).max() < 0.05 * np.abs(want).max()

"""Quantized outputs ORT runs in integer: exporter idioms normalized (Paddle's bias / folded-BN Mul and
Add, hard-swish, Split, shape-computed Reshape) and activation MatMuls / Softmax quantized, so ORT's
optimized graph keeps no float op between Q/DQ pairs it could run in integer (with every activation at
8 bits: the default activation-precision decision may keep an outlier group float on purpose)."""

from __future__ import annotations

import numpy as np
from _util import compile_state, nodes_by_op, run, state_model, static_matmul_target
from dfq_onnx.models import builders, exported
from dfq_onnx.passes.normalize import Normalize

import dfq_onnx
from dfq_onnx.backends.fusion import float_ops_between_qdq


def test_paddle_idioms_normalize_to_fused_forms():
    model = exported.paddle_style()
    state = compile_state(model, [Normalize()])
    out = state_model(state)
    done = state.report.model["canonicalized"]
    assert done["Mul/Add folded into layer"] == 3                       # Mul, Add into conv1; Add -> Gemm
    assert done["Reshape target constant"] == 1
    assert state.graph.inputs[0].shape[0] == "N"                          # -1 became symbolic
    assert [n.op_type for n in out.graph.node].count("Gemm") == 1 and not nodes_by_op(out, "MatMul")
    assert not nodes_by_op(out, "Shape") and len(nodes_by_op(out, "Mul")) == 1   # the hard-swish Mul
    feeds = {"input": np.random.default_rng(0).standard_normal((3, 3, 8, 8)).astype(np.float32)}
    np.testing.assert_allclose(run(out, feeds)[0], run(model, feeds)[0], rtol=1e-4, atol=1e-5)


def test_conv_output_read_twice_keeps_its_mul():
    state = compile_state(exported.paddle_style(), [Normalize()])
    # the hard-swish Add(+3) reads conv1's output, and so does its Mul: neither folds into conv1
    assert len([n for n in state.graph.nodes if n.op == "Add"]) == 2           # hard-swish +3, split sum


def test_hard_swish_and_split_run_in_integer():
    out, _ = dfq_onnx.quantize(exported.paddle_style(), calib="noise", act_bits=8, progress=False)
    # QLinearAdd(+3, clip absorbed), QLinearMul; the Div by 6 goes into the next Conv's weights
    # (Normalize: core/reader_fold.py), where ORT's own quantizer leaves it float
    assert not float_ops_between_qdq(out)


def test_attention_matmuls_and_softmax_run_in_integer(tmp_path):
    # static MatMuls (ort-cpu's default encodes MatMuls by dynamic int8 / weight-only forms instead)
    out, _ = dfq_onnx.quantize(exported.attention(), calib="noise", act_bits=8, progress=False,
                               target=static_matmul_target(tmp_path))
    assert not float_ops_between_qdq(out)
    assert len(nodes_by_op(out, "QuantizeLinear")) >= 6     # input, q, k(t), scores, probs, v, context


def test_classifier_tail_stays_float():
    out, _ = dfq_onnx.quantize(builders.conv_silu(), calib="noise", act_bits=8, progress=False)
    assert not float_ops_between_qdq(out)

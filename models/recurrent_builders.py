"""Tiny recurrent-cell graphs as torch exports an unrolled RNN after a CNN (a CRNN text reader).

``conv_zero_state``: convolution features and the first step of an LSTM cell whose initial state is zeros
of shape [batch, hidden], the batch read off the features with Shape (torch's ``h0 = zeros(x.size(0),
H)``)::

    input [N, C, H, W] ─ conv1 ─ bn1 ─ relu1 ─ conv2 ─ bn2 ─ relu2 ─ Reshape [N, C H W] = features
    features ─ Shape ─ Gather 0 ─ Concat [N, hidden] ─ ConstantOfShape 0 = h0
    features ─ gemm_ih (W_ih, b_ih) ─┐
    h0 ─────── gemm_hh (W_hh) ───────┴─ Add = gates ─ Sigmoid ─ output [N, 4 hidden]

Passes the ONNX checker and runs in ONNX Runtime (opset 17).
"""

from __future__ import annotations

import numpy as np
import onnx
from dfq_onnx.models.builders import _bn, _conv, _conv_w, _init, _model, _vi
from onnx import TensorProto, helper

__all__ = ["conv_zero_state"]


def conv_zero_state(c_in: int = 3, c: int = 8, h: int = 4, w: int = 8, hidden: int = 6, seed: int = 0
                    ) -> onnx.ModelProto:
    """The graph of the module docstring; input [N, c_in, h, w], output [N, 4 hidden]."""
    rng = np.random.default_rng(seed)
    feat = c * h * w
    inits = [_init("conv1.weight", _conv_w(rng, c, c_in, 3)), _init("conv2.weight", _conv_w(rng, c, c, 3)),
             _init("cell.w_ih",
                   (rng.standard_normal((4 * hidden, feat)) / np.sqrt(feat)).astype(np.float32)),
             _init("cell.b_ih", rng.normal(0, 0.1, 4 * hidden).astype(np.float32)),
             _init("cell.w_hh",
                   (rng.standard_normal((4 * hidden, hidden)) / np.sqrt(hidden)).astype(np.float32)),
             _init("flat_shape", np.array([0, feat], np.int64)), _init("axis0", np.array([0], np.int64)),
             _init("hidden_dim", np.array([hidden], np.int64))]
    zero = helper.make_tensor("zero", TensorProto.FLOAT, [1], [0.0])
    nodes = [_conv("conv1", "input", "conv1.weight", "conv1_out"),
             _bn(rng, "bn1", c, "conv1_out", "bn1_out", inits),
             helper.make_node("Relu", ["bn1_out"], ["relu1_out"], name="relu1"),
             _conv("conv2", "relu1_out", "conv2.weight", "conv2_out"),
             _bn(rng, "bn2", c, "conv2_out", "bn2_out", inits),
             helper.make_node("Relu", ["bn2_out"], ["relu2_out"], name="relu2"),
             helper.make_node("Reshape", ["relu2_out", "flat_shape"], ["features"], name="flatten"),
             helper.make_node("Shape", ["features"], ["features_shape"], name="shape"),
             helper.make_node("Gather", ["features_shape", "axis0"], ["batch"], name="batch", axis=0),
             helper.make_node("Concat", ["batch", "hidden_dim"], ["state_shape"], name="state_shape", axis=0),
             helper.make_node("ConstantOfShape", ["state_shape"], ["h0"], name="h0", value=zero),
             helper.make_node("Gemm", ["features", "cell.w_ih", "cell.b_ih"], ["x_gates"], name="gemm_ih",
                              transB=1),
             helper.make_node("Gemm", ["h0", "cell.w_hh"], ["h_gates"], name="gemm_hh", transB=1),
             helper.make_node("Add", ["h_gates", "x_gates"], ["gates"], name="gates"),
             helper.make_node("Sigmoid", ["gates"], ["output"], name="sigmoid")]
    return _model(nodes, [_vi("input", ["N", c_in, h, w])], [_vi("output", ["N", 4 * hidden])], inits,
                  name="conv_zero_state")

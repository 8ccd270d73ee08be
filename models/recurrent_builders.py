"""Tiny recurrent-cell graphs as torch exports an unrolled RNN after a CNN (a CRNN text reader).

``conv_zero_state``: convolution features and the first step of an LSTM cell whose initial state is zeros
of shape [batch, hidden], the batch read off the features with Shape (torch's ``h0 = zeros(x.size(0),
H)``)::

    input [N, C, H, W] ─ conv1 ─ bn1 ─ relu1 ─ conv2 ─ bn2 ─ relu2 ─ Reshape [N, C H W] = features
    features ─ Shape ─ Gather 0 ─ Concat [N, hidden] ─ ConstantOfShape 0 = h0
    features ─ gemm_ih (W_ih, b_ih) ─┐
    h0 ─────── gemm_hh (W_hh) ───────┴─ Add = gates ─ Sigmoid ─ output [N, 4 hidden]

``lstm_encoder``: a sequence encoder with ONNX LSTM nodes, as torch exports nn.LSTM (a speaker encoder,
a CRNN's recurrent head): a linear projection, a first LSTM (optionally bidirectional, with peepholes,
with sequence_lens / initial-state inputs), a second forward LSTM, the last
step's hidden state and a linear head::

    frames [N, T, F] ─ proj (MatMul) ─ Transpose [T, N, I] ─ lstm1 ─ Y [T, D, N, H]
        ─ Transpose ─ Reshape [T, N, D H] ─ lstm2 ─ Y_h [1, N, H] ─ Squeeze ─ head (Gemm) ─ output [N, K]

`gain` > 1 scales proj's first output channel by it (and lstm1's weights reading it by 1 / gain): the
same function, but one input channel `gain` x the rest, as a power spectrum without its log reaches a
speaker encoder's first LSTM -- one grid per call for the LSTM's input spends its levels on that channel.

``framed_lstm``: a streaming voice-activity detector as silero-vad v6 is exported: frames [T, L] (one
call is one stream), a Conv over each frame (the frames are the Conv's batch), and an LSTM that runs
over the frames (they are its sequence) from a state h / c [1, 1, H] the caller carries between calls::

    frames [T, L] ─ Unsqueeze 1 ─ conv ─ relu ─ ReduceMean = features [T, C] ─ Unsqueeze 1 [T, 1, C]
        ─ lstm (h, c) ─ Y [T, 1, 1, H] ─ Squeeze ─ fc (MatMul) ─ Sigmoid ─ prob [T, 1];  hn, cn [1, 1, H]

With `summary` the state is internal (zeros, no h / c inputs or outputs) and a second output reads the
final state, one row for the T rows of a call: hn ─ Reshape [1, H] ─ head (MatMul) ─ Relu ─ summary [1, 2H].

Passes the ONNX checker and runs in ONNX Runtime (opset 17).
"""

from __future__ import annotations

import numpy as np
import onnx
from dfq_onnx.models.builders import _bn, _conv, _conv_w, _init, _model, _vi
from onnx import TensorProto, helper, numpy_helper

__all__ = ["conv_zero_state", "framed_lstm", "lstm_encoder"]


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


def _lstm_weights(rng, d: int, hidden: int, width: int, tag: str, peepholes: bool) -> list[onnx.TensorProto]:
    w = rng.standard_normal((d, 4 * hidden, width)) / np.sqrt(width)
    r = rng.standard_normal((d, 4 * hidden, hidden)) / np.sqrt(hidden)
    out = [_init(f"{tag}.W", w.astype(np.float32)), _init(f"{tag}.R", r.astype(np.float32)),
           _init(f"{tag}.B", rng.normal(0, 0.1, (d, 8 * hidden)).astype(np.float32))]
    if peepholes:
        out.append(_init(f"{tag}.P", rng.normal(0, 0.3, (d, 3 * hidden)).astype(np.float32)))
    return out


def lstm_encoder(features: int = 12, steps: int = 16, width: int = 16, hidden: int = 16, classes: int = 5,
                 bidirectional: bool = False, sequence_lens: bool = False, initial_state: bool = False,
                 peepholes: bool = False, gain: float = 1.0, seed: int = 0
                 ) -> onnx.ModelProto:
    """The encoder of the module docstring. Inputs `frames` [N, steps, features], with `sequence_lens`
    also `lengths` [N] int32, with `initial_state` also `h0` / `c0` [D, N, hidden] (lstm1's states)."""
    rng = np.random.default_rng(seed)
    d = 2 if bidirectional else 1
    scaled = lambda shape, fan_in: (rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32)  # noqa: E731
    inits = [_init("proj.weight", scaled((features, width), features)),
             *_lstm_weights(rng, d, hidden, width, "lstm1", peepholes),
             *_lstm_weights(rng, 1, hidden, d * hidden, "lstm2", False),
             _init("head.weight", scaled((classes, hidden), hidden)),
             _init("head.bias", rng.normal(0, 0.1, classes).astype(np.float32)),
             _init("seq_shape", np.array([0, 0, d * hidden], np.int64)),
             _init("axis0", np.array([0], np.int64))]
    if gain != 1.0:
        for i, scale in ((0, gain), (1, 1.0 / gain)):    # proj's first column up, lstm1's W reading it down
            w = numpy_helper.to_array(inits[i]).copy()
            w[(slice(None), 0) if i == 0 else (slice(None), slice(None), 0)] *= scale
            inits[i].CopyFrom(_init(inits[i].name, w.astype(np.float32)))
    x = "proj_out"
    nodes = [helper.make_node("MatMul", ["frames", "proj.weight"], [x], name="proj")]
    nodes.append(helper.make_node("Transpose", [x], ["seq"], name="to_time_major", perm=[1, 0, 2]))
    ins = ["seq", "lstm1.W", "lstm1.R", "lstm1.B", "lengths" if sequence_lens else "",
           "h0" if initial_state else "", "c0" if initial_state else "", "lstm1.P" if peepholes else ""]
    extra = {"direction": "bidirectional"} if bidirectional else {}
    nodes.append(helper.make_node("LSTM", ins, ["lstm1_y"], name="lstm1", hidden_size=hidden, **extra))
    nodes += [helper.make_node("Transpose", ["lstm1_y"], ["lstm1_t"], name="y_steps", perm=[0, 2, 1, 3]),
              helper.make_node("Reshape", ["lstm1_t", "seq_shape"], ["lstm1_seq"], name="y_merge"),
              helper.make_node("LSTM", ["lstm1_seq", "lstm2.W", "lstm2.R", "lstm2.B"], ["", "lstm2_h"],
                               name="lstm2", hidden_size=hidden),
              helper.make_node("Squeeze", ["lstm2_h", "axis0"], ["last"], name="last"),
              helper.make_node("Gemm", ["last", "head.weight", "head.bias"], ["output"], name="head",
                               transB=1)]
    inputs = [_vi("frames", ["N", steps, features])]
    inputs += [_vi("lengths", ["N"], TensorProto.INT32)] if sequence_lens else []
    inputs += [_vi("h0", [d, "N", hidden]), _vi("c0", [d, "N", hidden])] if initial_state else []
    return _model(nodes, inputs, [_vi("output", ["N", classes])], inits, name="lstm_encoder")



def framed_lstm(frame: int = 64, c: int = 8, hidden: int = 16, seed: int = 0,
                summary: bool = False) -> onnx.ModelProto:
    """The streaming detector of the module docstring: inputs frames [T, frame], h / c [1, 1, hidden];
    outputs prob [T, 1], hn / cn [1, 1, hidden] (`summary`: frames in; prob and summary [1, 2 hidden] out)."""
    rng = np.random.default_rng(seed)

    def gauss(shape: tuple[int, ...], scale: float) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    inits = [_init("conv.weight", gauss((c, 1, 8), 1 / 3)),
             _init("conv.bias", rng.normal(0, 0.1, c).astype(np.float32)),
             _init("lstm.W", gauss((1, 4 * hidden, c), c ** -0.5)),
             _init("lstm.R", gauss((1, 4 * hidden, hidden), hidden ** -0.5)),
             _init("fc.weight", gauss((hidden, 1), hidden ** -0.5)),
             _init("axis1", np.array([1], np.int64)), _init("axes12", np.array([1, 2], np.int64))]
    nodes = [helper.make_node("Unsqueeze", ["frames", "axis1"], ["x"], name="channel"),
             helper.make_node("Conv", ["x", "conv.weight", "conv.bias"], ["conv_out"], name="conv",
                              strides=[4]),
             helper.make_node("Relu", ["conv_out"], ["relu_out"], name="relu"),
             helper.make_node("ReduceMean", ["relu_out"], ["features"], name="pool", axes=[2], keepdims=0),
             helper.make_node("Unsqueeze", ["features", "axis1"], ["seq"], name="seq"),
             helper.make_node("LSTM", ["seq", "lstm.W", "lstm.R", "", "", "h", "c"], ["y", "hn", "cn"],
                              name="lstm", hidden_size=hidden),
             helper.make_node("Squeeze", ["y", "axes12"], ["states"], name="squeeze"),
             helper.make_node("MatMul", ["states", "fc.weight"], ["logit"], name="fc"),
             helper.make_node("Sigmoid", ["logit"], ["prob"], name="sigmoid")]
    if summary:
        return _with_summary(nodes, inits, rng, frame, hidden)
    return _model(nodes, [_vi("frames", ["T", frame]), _vi("h", [1, 1, hidden]), _vi("c", [1, 1, hidden])],
                  [_vi("prob", ["T", 1]), _vi("hn", [1, 1, hidden]), _vi("cn", [1, 1, hidden])], inits,
                  name="framed_lstm")


def _with_summary(nodes: list, inits: list, rng: np.random.Generator, frame: int,
                  hidden: int) -> onnx.ModelProto:
    """`framed_lstm`'s graph with its state internal and a head on the final state (`summary`)."""
    lstm = next(n for n in nodes if n.op_type == "LSTM")
    lstm.input[5:] = ["", ""]
    del lstm.output[2:]
    head = (rng.standard_normal((hidden, 2 * hidden)) * hidden ** -0.5).astype(np.float32)
    inits += [_init("head.weight", head),
              _init("row", np.array([1, hidden], np.int64))]
    nodes += [helper.make_node("Reshape", ["hn", "row"], ["final"], name="final"),
              helper.make_node("MatMul", ["final", "head.weight"], ["head_out"], name="head"),
              helper.make_node("Relu", ["head_out"], ["summary"], name="head_relu")]
    outputs = [_vi("prob", ["T", 1]), _vi("summary", [1, 2 * hidden])]
    return _model(nodes, [_vi("frames", ["T", frame])], outputs, inits, name="framed_lstm_summary")

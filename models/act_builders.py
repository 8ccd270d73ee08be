"""Tiny graphs with an activation outlier, for the activation-precision decision (passes/act_precision.py).

``outlier_attention``: a pre-LN transformer block whose FFN output carries one channel `scale` times
larger than the others (the residual-stream outliers of BERT-family encoders)::

    input ─┬─ ln1 ─┬─ q ─ q_add ─────────────────┐
           │       ├─ k ─ k_add ─ kT ─── scores ─┴─ scaled ─ softmax ─ ctx ─ o ─ o_add ─┐
           │       └─ v ─ v_add ──────────────────────────────────────┘                 │
           └──────────────────────────────────────────────────────────────────── res1 (Add)
                                                                                         │
           ┌─────────────────────────────────────────────────────────────────────────────┤
           └─ ln2 ─ f1 ─ f1_add ─ relu ─ f2 (one output channel x scale) ─ f2_add ─ res2 ─ output

``outlier_residual``: a residual CNN whose first block's second conv ("conv2") writes one output channel
`scale` times larger; the residual sum ("add") carries it to a depthwise conv ("dw") whose filter on that
channel is `scale` times smaller (a normalization folded into the next layer, as BN folding leaves it),
then normal residual blocks and a plain branch concatenated before the head::

    input ─ conv1 ─ relu1 ─┬─ b0a ─ relu ─ conv2 (x scale on channel 0) ─ add ─ relu ─ dw (/ scale) ─ relu
                           ├──────────────────────────────────────────────┘
                           │    ─ pw ─ relu ─ [residual blocks 1 .. blocks-1] ─┐
                           └─ conv3 ─ relu3 ──────────────────────────────── concat ─ gap ─ flatten ─ fc

``decomposed_layernorm``: a conv, then a LayerNorm over channels written out as TF / JAX exports it
(mean = ReduceSum(x) * 1/C, var = ReduceSum(x * x) * 1/C - mean * mean, rsqrt(var + eps) * gamma), on a
feature map with a large common offset (E[x^2] >> var: the cancellation 8 bits cannot carry), then a
conv and a pooled Gemm head::

    input ─ conv1 (bias + offset) ─┬─ Sub(mean) ─ Mul(rsqrt * gamma) ─ Add(beta) ─ conv2 ─ gap ─ fc
                                   └─ statistics (ReduceSum, Mul, Sub, Add, Sqrt, Reciprocal)

``hardswish_disparity``: a PP-LCNet / MobileNetV3-style stack whose hard-swish outputs carry channels
`spread` times apart in range (a BN-folded conv's gains) and feed depthwise convs that scale them back, so
one per-tensor 8-bit grid rounds the small channels away at every block and the damage compounds
(PP-PicoDet's LCNet backbone: 500x); hard-swish written x * Clip(x + 3, 0, 6) / 6 as paddle2onnx does::

    input ─ stem (x gains) ─ hs ─ [dw (/ gains) ─ hs ─ pw (x gains) ─ hs] x blocks ─ dw (/ gains) ─ hs ─ head

All pass the ONNX checker and run in ONNX Runtime (opset 17, LayerNormalization).
"""

from __future__ import annotations

import numpy as np
import onnx
from dfq_onnx.models.builders import _init, _model, _vi
from onnx import helper

__all__ = ["decomposed_layernorm", "hardswish_disparity", "outlier_attention", "outlier_residual"]


def _mm(name: str, x: str, rng, k: int, n: int, inits: list, nodes: list, bias: bool = True,
        col_scale: np.ndarray | None = None) -> str:
    w = (rng.standard_normal((k, n)) / np.sqrt(k)).astype(np.float32)
    if col_scale is not None:
        w = w * col_scale
    inits.append(_init(f"{name}.weight", w))
    nodes.append(helper.make_node("MatMul", [x, f"{name}.weight"], [f"{name}_out"], name=name))
    if not bias:
        return f"{name}_out"
    inits.append(_init(f"{name}.bias", rng.normal(0, 0.1, n).astype(np.float32)))
    nodes.append(helper.make_node("Add", [f"{name}_out", f"{name}.bias"], [f"{name}_add_out"],
                                  name=f"{name}_add"))
    return f"{name}_add_out"


def _ln(name: str, x: str, d: int, inits: list, nodes: list) -> str:
    inits += [_init(f"{name}.gamma", np.ones(d, np.float32)), _init(f"{name}.beta", np.zeros(d, np.float32))]
    nodes.append(helper.make_node("LayerNormalization", [x, f"{name}.gamma", f"{name}.beta"], [f"{name}_out"],
                                  name=name, axis=-1, epsilon=1e-5))
    return f"{name}_out"


def outlier_attention(seq: int = 8, d: int = 16, ffn: int = 32, scale: float = 100.0,
                      seed: int = 0) -> onnx.ModelProto:
    """The pre-LN block of the module docstring; input and output [N, seq, d]."""
    rng = np.random.default_rng(seed)
    inits: list = [_init("scale", np.array(1.0 / np.sqrt(d), np.float32))]
    nodes: list = []
    h = _ln("ln1", "input", d, inits, nodes)
    q, k, v = (_mm(n, h, rng, d, d, inits, nodes) for n in ("q", "k", "v"))
    nodes += [helper.make_node("Transpose", [k], ["kT_out"], name="kT", perm=[0, 2, 1]),
              helper.make_node("MatMul", [q, "kT_out"], ["scores_out"], name="scores"),
              helper.make_node("Mul", ["scores_out", "scale"], ["scaled_out"], name="scaled"),
              helper.make_node("Softmax", ["scaled_out"], ["probs_out"], name="softmax", axis=-1),
              helper.make_node("MatMul", ["probs_out", v], ["ctx_out"], name="ctx")]
    o = _mm("o", "ctx_out", rng, d, d, inits, nodes)
    nodes.append(helper.make_node("Add", ["input", o], ["res1_out"], name="res1"))
    f = _mm("f1", _ln("ln2", "res1_out", d, inits, nodes), rng, d, ffn, inits, nodes)
    nodes.append(helper.make_node("Relu", [f], ["relu_out"], name="relu"))
    col = np.ones(d, np.float32)
    col[0] = scale
    f2 = _mm("f2", "relu_out", rng, ffn, d, inits, nodes, col_scale=col)
    nodes.append(helper.make_node("Add", ["res1_out", f2], ["output"], name="res2"))
    return _model(nodes, [_vi("input", ["N", seq, d])], [_vi("output", ["N", seq, d])], inits,
                  name="outlier_attention")


def _conv(name: str, x: str, rng, c_in: int, c_out: int, inits: list, nodes: list, k: int = 3, group: int = 1,
          scale: np.ndarray | None = None) -> str:
    w = (rng.standard_normal((c_out, c_in // group, k, k)) * np.sqrt(2.0 / (c_in // group * k * k)))
    w, b = w.astype(np.float32), rng.normal(0, 0.1, c_out).astype(np.float32)
    if scale is not None:      # output channel i times scale[i]
        w, b = w * scale[:, None, None, None], b * scale
    inits += [_init(f"{name}.weight", w), _init(f"{name}.bias", b)]
    nodes.append(helper.make_node("Conv", [x, f"{name}.weight", f"{name}.bias"], [f"{name}_out"], name=name,
                                  pads=[k // 2] * 4, group=group))
    return f"{name}_out"


def _relu(x: str, name: str, nodes: list) -> str:
    nodes.append(helper.make_node("Relu", [x], [f"{name}_out"], name=name))
    return f"{name}_out"


def outlier_residual(c: int = 8, hw: int = 8, classes: int = 10, blocks: int = 3, scale: float = 100.0,
                     seed: int = 0) -> onnx.ModelProto:
    """The residual network of the module docstring; input [N, 3, hw, hw], output [N, classes]."""
    rng = np.random.default_rng(seed)
    inits: list = []
    nodes: list = []
    stem = _relu(_conv("conv1", "input", rng, 3, c, inits, nodes), "relu1", nodes)
    big = np.ones(c, np.float32)
    big[0] = scale
    y = _relu(_conv("b0a", stem, rng, c, c, inits, nodes), "b0relu", nodes)
    y = _conv("conv2", y, rng, c, c, inits, nodes, scale=big)
    nodes.append(helper.make_node("Add", [stem, y], ["add_out"], name="add"))
    x = _relu("add_out", "b0out", nodes)
    x = _relu(_conv("dw", x, rng, c, c, inits, nodes, group=c, scale=1 / big), "dwrelu", nodes)
    x = _relu(_conv("pw", x, rng, c, c, inits, nodes, k=1), "pwrelu", nodes)
    for i in range(1, blocks):
        y = _relu(_conv(f"b{i}a", x, rng, c, c, inits, nodes), f"b{i}relu", nodes)
        y = _conv(f"b{i}b", y, rng, c, c, inits, nodes)
        nodes.append(helper.make_node("Add", [x, y], [f"b{i}add_out"], name=f"b{i}add"))
        x = _relu(f"b{i}add_out", f"b{i}out", nodes)
    z = _relu(_conv("conv3", stem, rng, c, c, inits, nodes), "relu3", nodes)
    fc = (rng.standard_normal((classes, 2 * c)) / np.sqrt(2 * c)).astype(np.float32)
    inits += [_init("fc.weight", fc), _init("fc.bias", rng.normal(0, 0.1, classes).astype(np.float32))]
    nodes += [helper.make_node("Concat", [x, z], ["concat_out"], name="concat", axis=1),
              helper.make_node("GlobalAveragePool", ["concat_out"], ["gap_out"], name="gap"),
              helper.make_node("Flatten", ["gap_out"], ["flat_out"], name="flatten", axis=1),
              helper.make_node("Gemm", ["flat_out", "fc.weight", "fc.bias"], ["output"], name="fc", transB=1)]
    return _model(nodes, [_vi("input", ["N", 3, hw, hw])], [_vi("output", ["N", classes])], inits,
                  name="outlier_residual")


def decomposed_layernorm(c: int = 16, hw: int = 8, classes: int = 5, offset: float = 20.0,
                         seed: int = 0) -> onnx.ModelProto:
    """The network of the module docstring; input [N, 3, hw, hw], output [N, classes]."""
    rng = np.random.default_rng(seed)
    inits: list = [_init("axes", np.array([1], np.int64)), _init("inv_c", np.array(1.0 / c, np.float32)),
                   _init("eps", np.array(1e-6, np.float32)), _init("offset", np.array(offset, np.float32)),
                   _init("gamma", rng.uniform(0.5, 1.5, (1, c, 1, 1)).astype(np.float32)),
                   _init("beta", rng.normal(0, 0.1, (1, c, 1, 1)).astype(np.float32))]
    nodes: list = []
    x = _conv("conv1", "input", rng, 3, c, inits, nodes)
    nodes += [helper.make_node("Add", [x, "offset"], ["x"], name="shift"),
              helper.make_node("ReduceSum", ["x", "axes"], ["sum"], name="sum"),
              helper.make_node("Mul", ["sum", "inv_c"], ["mean"], name="mean"),
              helper.make_node("Mul", ["x", "x"], ["square"], name="square"),
              helper.make_node("ReduceSum", ["square", "axes"], ["sum_sq"], name="sum_sq"),
              helper.make_node("Mul", ["sum_sq", "inv_c"], ["mean_sq"], name="mean_sq"),
              helper.make_node("Mul", ["mean", "mean"], ["sq_mean"], name="sq_mean"),
              helper.make_node("Sub", ["mean_sq", "sq_mean"], ["var"], name="var"),
              helper.make_node("Add", ["var", "eps"], ["var_eps"], name="var_eps"),
              helper.make_node("Sqrt", ["var_eps"], ["std"], name="std"),
              helper.make_node("Reciprocal", ["std"], ["rstd"], name="rstd"),
              helper.make_node("Mul", ["rstd", "gamma"], ["scale"], name="scale"),
              helper.make_node("Sub", ["x", "mean"], ["centred"], name="centre"),
              helper.make_node("Mul", ["centred", "scale"], ["normed"], name="normalize"),
              helper.make_node("Add", ["normed", "beta"], ["ln_out"], name="shift_beta")]
    y = _relu(_conv("conv2", "ln_out", rng, c, c, inits, nodes), "relu2", nodes)
    fc = (rng.standard_normal((classes, c)) / np.sqrt(c)).astype(np.float32)
    inits += [_init("fc.weight", fc), _init("fc.bias", rng.normal(0, 0.1, classes).astype(np.float32))]
    nodes += [helper.make_node("GlobalAveragePool", [y], ["gap_out"], name="gap"),
              helper.make_node("Flatten", ["gap_out"], ["flat_out"], name="flatten", axis=1),
              helper.make_node("Gemm", ["flat_out", "fc.weight", "fc.bias"], ["output"], name="fc", transB=1)]
    return _model(nodes, [_vi("input", ["N", 3, hw, hw])], [_vi("output", ["N", classes])], inits,
                  opset=13, name="decomposed_layernorm")


def _hardswish(x: str, name: str, inits: list, nodes: list) -> str:
    """x * Clip(x + 3, 0, 6) / 6, as paddle2onnx writes HardSwish."""
    if not any(i.name == "hs.three" for i in inits):
        inits += [_init("hs.three", np.array(3.0, np.float32)), _init("hs.zero", np.array(0.0, np.float32)),
                  _init("hs.six", np.array(6.0, np.float32))]
    nodes += [helper.make_node("Add", [x, "hs.three"], [f"{name}_add"], name=f"{name}_add"),
              helper.make_node("Clip", [f"{name}_add", "hs.zero", "hs.six"], [f"{name}_clip"],
                               name=f"{name}_clip"),
              helper.make_node("Mul", [x, f"{name}_clip"], [f"{name}_mul"], name=f"{name}_mul"),
              helper.make_node("Div", [f"{name}_mul", "hs.six"], [f"{name}_out"], name=f"{name}_div")]
    return f"{name}_out"


def hardswish_disparity(c: int = 16, hw: int = 16, outputs: int = 4, blocks: int = 1,
                        spread: float = 500.0, seed: int = 0) -> onnx.ModelProto:
    """The hard-swish network of the module docstring; input [N, 3, hw, hw], output [N, outputs, hw, hw]."""
    rng = np.random.default_rng(seed)
    inits: list = []
    nodes: list = []
    gains = np.geomspace(1.0, 1.0 / spread, c).astype(np.float32)     # channel i's range: 1 .. 1 / spread
    x = _hardswish(_conv("stem", "input", rng, 3, c, inits, nodes, scale=gains * 4), "hs0", inits, nodes)
    for i in range(blocks):
        x = _conv(f"dw{i}", x, rng, c, c, inits, nodes, group=c, scale=1 / gains)   # a BN-folded gain
        x = _hardswish(x, f"hs{i}a", inits, nodes)
        x = _conv(f"pw{i}", x, rng, c, c, inits, nodes, k=1, scale=gains * 4)
        x = _hardswish(x, f"hs{i}b", inits, nodes)
    x = _conv("dw_last", x, rng, c, c, inits, nodes, group=c, scale=1 / gains)
    x = _hardswish(x, "hs_last", inits, nodes)
    w = (rng.standard_normal((outputs, c, 1, 1)) / np.sqrt(c)).astype(np.float32)
    inits += [_init("head.weight", w), _init("head.bias", rng.normal(0, 0.1, outputs).astype(np.float32))]
    nodes.append(helper.make_node("Conv", [x, "head.weight", "head.bias"], ["output"], name="head"))
    return _model(nodes, [_vi("input", ["N", 3, hw, hw])], [_vi("output", ["N", outputs, hw, hw])], inits,
                  opset=13, name="hardswish_disparity")

"""Tiny graphs written the way exporters write them (for Normalize's rewrites and ORT's fusions).

``same_pad_flatten``: TensorFlow-style "same" padding as explicit ``Pad`` nodes before a strided Conv
and an AveragePool, and PyTorch's ``x.view(x.size(0), -1)`` flatten (Shape -> Gather -> Unsqueeze ->
Concat -> Reshape) before the classifier, as EfficientNet-Lite's export has them::

    input ─ pad1 ─ conv1 (stride 2) ─ bn1 ─ relu1 ─ pad2 ─ pool (AveragePool) ─ conv2 ─ relu2 ─ gap
          ─ reshape(Concat(Unsqueeze(Gather(Shape(input), 0)), [-1])) ─ fc ─ output

``pad_value`` != 0 or ``pad_mode`` != "constant" make pads that must not be folded.

``conv1d_mlp``: Hugging Face GPT-2's `Conv1D` (`addmm(b, x.view(-1, k), W).view(*x.shape[:-1], n)`) as
its TorchScript export writes it, twice (an MLP over tokens [N, S, d])::

    input ─ Reshape([-1, d]) ─ Gemm(W1 [d, f], b1) ─ Reshape(Concat(Shape(input)[0], Shape(input)[1], [f]))
          ─ Relu ─ the same with W2 [f, d] ─ output [N, S, d]

``patch_encoder``: a vision transformer's embedding as Hugging Face's ViT export writes it, every dimension
of pixel_values dynamic::

    pixel_values [N, C, H, W] ─ Conv(D, p x p, stride p) ─ Reshape([0, D, -1]) ─ Transpose ─┐
    class token [1, 1, D] ─ Expand([N, 1, D]) ───────────────────────────────────── Concat ─ Add(position
    [1, (size / p)^2 + 1, D]) ─ ReduceMean(tokens) ─ MatMul(head) ─► logits [N, classes]

``back="flat"`` keeps the second Gemm's output flat ([N * S, d], a Reshape to [-1, d]): that Gemm is not
token-wise by the rewrite's rule.
"""

from __future__ import annotations

import numpy as np
import onnx
from dfq_onnx.models.builders import _bn, _conv_w, _init, _model, _vi
from onnx import helper, numpy_helper

__all__ = ["attention", "conv1d_mlp", "paddle_style", "patch_encoder", "same_pad_flatten", "wrapped_softmax"]


def same_pad_flatten(c_in: int = 3, c: int = 8, classes: int = 5, hw: int = 9, seed: int = 0,
                     pad_value: float = 0.0, pad_mode: str = "constant") -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    inits = [_init("conv1.weight", _conv_w(rng, c, c_in, 3)), _init("conv2.weight", _conv_w(rng, c, c, 1)),
             _init("fc.weight", (rng.standard_normal((classes, c)) / np.sqrt(c)).astype(np.float32)),
             _init("fc.bias", rng.normal(0, 0.1, classes).astype(np.float32)),
             _init("pad1.pads", np.array([0, 0, 0, 0, 0, 0, 1, 1], np.int64)),
             _init("pad2.pads", np.array([0, 0, 1, 1, 0, 0, 0, 0], np.int64)),
             numpy_helper.from_array(np.array(pad_value, np.float32), "pad.value"),   # 0-d scalars
             numpy_helper.from_array(np.array(0, np.int64), "gather.index"),
             _init("unsqueeze.axes", np.array([0], np.int64)),
             _init("minus_one", np.array([-1], np.int64))]
    pad = {"mode": pad_mode}
    nodes = [helper.make_node("Pad", ["input", "pad1.pads", "pad.value"], ["pad1_out"], name="pad1", **pad),
             helper.make_node("Conv", ["pad1_out", "conv1.weight"], ["conv1_out"], name="conv1",
                              strides=[2, 2]),
             _bn(rng, "bn1", c, "conv1_out", "bn1_out", inits),
             helper.make_node("Relu", ["bn1_out"], ["relu1_out"], name="relu1"),
             helper.make_node("Pad", ["relu1_out", "pad2.pads", "pad.value"], ["pad2_out"], name="pad2",
                              **pad),
             helper.make_node("AveragePool", ["pad2_out"], ["pool_out"], name="pool", kernel_shape=[2, 2]),
             helper.make_node("Conv", ["pool_out", "conv2.weight"], ["conv2_out"], name="conv2"),
             helper.make_node("Relu", ["conv2_out"], ["relu2_out"], name="relu2"),
             helper.make_node("GlobalAveragePool", ["relu2_out"], ["gap_out"], name="gap"),
             helper.make_node("Shape", ["input"], ["shape_out"], name="shape"),
             helper.make_node("Gather", ["shape_out", "gather.index"], ["batch"], name="gather", axis=0),
             helper.make_node("Unsqueeze", ["batch", "unsqueeze.axes"], ["batch_1d"], name="unsqueeze"),
             helper.make_node("Concat", ["batch_1d", "minus_one"], ["target"], name="concat", axis=0),
             helper.make_node("Reshape", ["gap_out", "target"], ["flat_out"], name="reshape"),
             helper.make_node("Gemm", ["flat_out", "fc.weight", "fc.bias"], ["output"], name="fc", transB=1)]
    return _model(nodes, [_vi("input", ["N", c_in, hw, hw])], [_vi("output", ["N", classes])], inits,
                  name="same_pad_flatten")


def _hardswish(x: str, y: str, p: str, inits: list) -> list[onnx.NodeProto]:
    """x * clip(x + 3, 0, 6) / 6, as Paddle and older PyTorch exports write hard-swish."""
    inits += [numpy_helper.from_array(np.array(v, np.float32), f"{p}.{k}")
              for k, v in (("three", 3.0), ("zero", 0.0), ("six", 6.0))]
    return [helper.make_node("Add", [x, f"{p}.three"], [f"{p}_add"], name=f"{p}_add"),
            helper.make_node("Clip", [f"{p}_add", f"{p}.zero", f"{p}.six"], [f"{p}_clip"], name=f"{p}_clip"),
            helper.make_node("Mul", [x, f"{p}_clip"], [f"{p}_mul"], name=f"{p}_mul"),
            helper.make_node("Div", [f"{p}_mul", f"{p}.six"], [y], name=f"{p}_div")]


def paddle_style(c_in: int = 3, c: int = 8, classes: int = 4, hw: int = 8, seed: int = 0) -> onnx.ModelProto:
    """Paddle-export idioms (opset 11, batch written as -1)::

        input ─ conv1 (no bias) ─ Mul(scale [1,C,1,1]) ─ Add(shift [C,1,1]) ─ hard-swish ─ conv2 ─ split
              ─ Add(halves) ─ gap ─ reshape(Concat(Cast(Slice(Cast(Shape(x), int32), 0:1)), [C/2]))
              ─ MatMul ─ Add(bias) ─ output
    """
    rng = np.random.default_rng(seed)
    half = c // 2
    inits = [_init("conv1.weight", _conv_w(rng, c, c_in, 3)), _init("conv2.weight", _conv_w(rng, c, c, 1)),
             _init("bn.scale", rng.uniform(0.5, 1.5, (1, c, 1, 1)).astype(np.float32)),
             _init("bn.shift", rng.normal(0, 0.3, (c, 1, 1)).astype(np.float32)),
             _init("fc.weight", (rng.standard_normal((half, classes)) / np.sqrt(half)).astype(np.float32)),
             _init("fc.bias", rng.normal(0, 0.1, classes).astype(np.float32)),
             _init("zero", np.array([0], np.int64)), _init("one", np.array([1], np.int64)),
             _init("width", np.array([half], np.int64))]
    nodes = [helper.make_node("Conv", ["input", "conv1.weight"], ["conv1_out"], name="conv1",
                              pads=[1, 1, 1, 1]),
             helper.make_node("Mul", ["conv1_out", "bn.scale"], ["scaled"], name="bn_mul"),
             helper.make_node("Add", ["bn.shift", "scaled"], ["shifted"], name="bn_add"),
             *_hardswish("shifted", "hs_out", "hs", inits),
             helper.make_node("Conv", ["hs_out", "conv2.weight"], ["conv2_out"], name="conv2"),
             helper.make_node("Split", ["conv2_out"], ["half_a", "half_b"], name="split", axis=1,
                              split=[half, half]),
             helper.make_node("Add", ["half_a", "half_b"], ["sum_out"], name="sum"),
             helper.make_node("GlobalAveragePool", ["sum_out"], ["gap_out"], name="gap"),
             helper.make_node("Shape", ["gap_out"], ["shape_out"], name="shape"),
             helper.make_node("Cast", ["shape_out"], ["shape_i32"], name="cast32", to=6),
             helper.make_node("Slice", ["shape_i32", "zero", "one"], ["batch_i32"], name="slice"),
             helper.make_node("Cast", ["batch_i32"], ["batch"], name="cast64", to=7),
             helper.make_node("Concat", ["batch", "width"], ["target"], name="concat", axis=-1),
             helper.make_node("Reshape", ["gap_out", "target"], ["flat_out"], name="reshape"),
             helper.make_node("MatMul", ["flat_out", "fc.weight"], ["fc_out"], name="fc"),
             helper.make_node("Add", ["fc_out", "fc.bias"], ["output"], name="fc_bias")]
    return _model(nodes, [_vi("input", [-1, c_in, hw, hw])], [_vi("output", [-1, classes])], inits, opset=11,
                  name="paddle_style")


def attention(t: int = 6, d: int = 8, seed: int = 0) -> onnx.ModelProto:
    """Single-head attention on input [N, t, d]::

        input ─┬ MatMul(Wq) ──────────────┐
               ├ MatMul(Wk) ─ Transpose ─ MatMul ─ Softmax ─┐
               └ MatMul(Wv) ────────────────────────────── MatMul ─ MatMul(Wo) ─ output
    """
    rng = np.random.default_rng(seed)
    w = {k: (rng.standard_normal((d, d)) / np.sqrt(d)).astype(np.float32) for k in ("q", "k", "v", "o")}
    inits = [_init(f"w{k}", v) for k, v in w.items()]
    nodes = [helper.make_node("MatMul", ["input", f"w{k}"], [k], name=f"proj_{k}") for k in "qkv"]
    nodes += [helper.make_node("Transpose", ["k"], ["kt"], name="transpose", perm=[0, 2, 1]),
              helper.make_node("MatMul", ["q", "kt"], ["scores"], name="scores"),
              helper.make_node("Softmax", ["scores"], ["probs"], name="softmax", axis=-1),
              helper.make_node("MatMul", ["probs", "v"], ["context"], name="context"),
              helper.make_node("MatMul", ["context", "wo"], ["output"], name="proj_o")]
    return _model(nodes, [_vi("input", ["N", t, d])], [_vi("output", ["N", t, d])], inits, name="attention")


def wrapped_softmax(t: int = 4, d: int = 6, seed: int = 0) -> onnx.ModelProto:
    """A last-axis Softmax as the version converter keeps opset-11 semantics on a 3-D tensor::

        input [N, t, d] ─ MatMul ─ x ─ Flatten(axis 2) ─ Softmax(axis 1) ─ Reshape(Shape(x)) ─ MatMul ─ output
    """
    rng = np.random.default_rng(seed)
    inits = [_init("w1", (rng.standard_normal((d, d)) / np.sqrt(d)).astype(np.float32)),
             _init("w2", (rng.standard_normal((d, d)) / np.sqrt(d)).astype(np.float32))]
    nodes = [helper.make_node("MatMul", ["input", "w1"], ["x"], name="mm1"),
             helper.make_node("Flatten", ["x"], ["flat"], name="flatten", axis=2),
             helper.make_node("Softmax", ["flat"], ["probs"], name="softmax", axis=1),
             helper.make_node("Shape", ["x"], ["x_shape"], name="shape"),
             helper.make_node("Reshape", ["probs", "x_shape"], ["restored"], name="reshape"),
             helper.make_node("MatMul", ["restored", "w2"], ["output"], name="mm2")]
    return _model(nodes, [_vi("input", ["N", t, d])], [_vi("output", ["N", t, d])], inits,
                  name="wrapped_softmax")


def conv_hardswish(form: str = "clip", c: int = 8, hw: int = 8, seed: int = 0, extra_reader: bool = False,
                   low: float = 0.0) -> onnx.ModelProto:
    """input ─ conv1 ─ x ─ hard-swish ─ conv2 ─ output, the hard-swish as exporters spell it (`form`):
    "clip": x * Clip(x + 3, low, 6) / 6; "relu": x * Relu(x + 3); "hardsigmoid": x * HardSigmoid(x)
    (alpha 0.2, beta 0.5); "op": HardSwish(x) (opset 14). `extra_reader`: x also feeds the output sum."""
    rng = np.random.default_rng(seed)
    inits = [_init("conv1.weight", _conv_w(rng, c, 3, 3)),
             _init("conv1.bias", rng.normal(0, 0.5, c).astype(np.float32)),
             _init("conv2.weight", _conv_w(rng, 4, c, 1)), _init("hs.three", np.array(3.0, np.float32)),
             _init("hs.low", np.array(low, np.float32)), _init("hs.six", np.array(6.0, np.float32))]
    gate = {"clip": [helper.make_node("Add", ["x", "hs.three"], ["a"], name="hs_add"),
                     helper.make_node("Clip", ["a", "hs.low", "hs.six"], ["u"], name="hs_clip")],
            "relu": [helper.make_node("Add", ["hs.three", "x"], ["a"], name="hs_add"),
                     helper.make_node("Relu", ["a"], ["u"], name="hs_relu")],
            "hardsigmoid": [helper.make_node("HardSigmoid", ["x"], ["u"], name="hs_sig", alpha=0.2,
                                             beta=0.5)]}
    body = ([helper.make_node("HardSwish", ["x"], ["hs_out"], name="hs")] if form == "op" else
            [*gate[form], helper.make_node("Mul", ["x", "u"], ["hs_out"], name="hs_mul")])
    out = "conv2_out" if extra_reader else "output"
    nodes = [helper.make_node("Conv", ["input", "conv1.weight", "conv1.bias"], ["x"], name="conv1",
                              pads=[1, 1, 1, 1]),
             *body, helper.make_node("Conv", ["hs_out", "conv2.weight"], [out], name="conv2")]
    if extra_reader:
        nodes.append(helper.make_node("ReduceMean", ["x"], ["x_mean"], name="mean", axes=[1], keepdims=1))
        nodes.append(helper.make_node("Add", ["conv2_out", "x_mean"], ["output"], name="sum"))
    return _model(nodes, [_vi("input", ["N", 3, hw, hw])], [_vi("output", ["N", 4, hw, hw])], inits,
                  name=f"conv_hardswish_{form}")


def _conv1d(name: str, x: str, y: str, w: np.ndarray, b: np.ndarray, inits: list,
            back: str = "tokens") -> list[onnx.NodeProto]:
    """GPT-2's Conv1D on x [N, S, k] (module docstring)."""
    k, n = w.shape
    c = {"weight": w, "bias": b, "flat": np.array([-1, k], np.int64), "n": np.array([n], np.int64),
         "flat_n": np.array([-1, n], np.int64), "axes": np.array([0], np.int64)}
    inits += [_init(f"{name}.{key}", v) for key, v in c.items()]
    inits += [numpy_helper.from_array(np.array(i, np.int64), f"{name}.i{i}") for i in (0, 1)]

    def node(op, ins, out, **kw):
        label = f"{name}_back" if out == y else f"{name}{out}"
        return helper.make_node(op, [i if i == x else f"{name}{i}" for i in ins],
                                [y if out == y else label], name=label, **kw)
    nodes = [node("Reshape", [x, ".flat"], "_flat"), node("Gemm", ["_flat", ".weight", ".bias"], "")]
    if back == "flat":
        return nodes + [node("Reshape", ["", ".flat_n"], y)]
    nodes.append(node("Shape", [x], "_shape"))
    for i in (0, 1):
        nodes += [node("Gather", ["_shape", f".i{i}"], f"_d{i}", axis=0),
                  node("Unsqueeze", [f"_d{i}", ".axes"], f"_u{i}")]
    return nodes + [node("Concat", ["_u0", "_u1", ".n"], "_target", axis=0),
                    node("Reshape", ["", "_target"], y)]


def conv1d_mlp(d: int = 16, f: int = 32, seq: int = 6, seed: int = 0,
               back: str = "tokens") -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    inits: list = []
    w1 = (rng.standard_normal((d, f)) / np.sqrt(d)).astype(np.float32)
    w2 = (rng.standard_normal((f, d)) / np.sqrt(f)).astype(np.float32)
    nodes = _conv1d("fc1", "input", "h", w1, rng.normal(0, 0.1, f).astype(np.float32), inits)
    nodes.append(helper.make_node("Relu", ["h"], ["h_relu"], name="relu"))
    nodes += _conv1d("fc2", "h_relu", "output", w2, rng.normal(0, 0.1, d).astype(np.float32), inits, back)
    out = ["N", seq, d] if back == "tokens" else [None, d]
    return _model(nodes, [_vi("input", ["N", seq, d])], [_vi("output", out)], inits, name="conv1d_mlp")


def patch_encoder(size: int = 16, patch: int = 4, c: int = 3, d: int = 8, classes: int = 5,
                  seed: int = 0, clip: bool = False) -> onnx.ModelProto:
    """`clip`: as CLIP's export writes it -- a Cast before the patch Conv, the position table read by a
    Gather at constant position ids."""
    rng = np.random.default_rng(seed)
    tokens = (size // patch) ** 2 + 1
    inits = [_init("patch.weight", (rng.standard_normal((d, c, patch, patch)) / patch).astype(np.float32)),
             _init("patch.bias", rng.normal(0, 0.1, d).astype(np.float32)),
             _init("cls", rng.normal(0, 1, (1, 1, d)).astype(np.float32)),
             _init("position", rng.normal(0, 0.1, (1, tokens, d)).astype(np.float32)),
             _init("head.weight", (rng.standard_normal((d, classes)) / np.sqrt(d)).astype(np.float32)),
             _init("grid", np.array([0, d, -1], np.int64)), _init("first", np.array([0], np.int64)),
             _init("one", np.array([1], np.int64)), _init("rest", np.array([1, d], np.int64))]
    pixels, position = ("pixels", "positions") if clip else ("pixel_values", "position")
    nodes = [helper.make_node("Cast", ["pixel_values"], ["pixels"], name="cast", to=1)] if clip else []
    if clip:
        inits += [_init("position_ids", np.arange(tokens, dtype=np.int64)[None]),
                  _init("position_table", rng.normal(0, 0.1, (tokens, d)).astype(np.float32))]
        nodes.append(helper.make_node("Gather", ["position_table", "position_ids"], [position], name="pos"))
    nodes += [helper.make_node("Conv", [pixels, "patch.weight", "patch.bias"], ["patches"],
                               name="patch", kernel_shape=[patch, patch], strides=[patch, patch]),
              helper.make_node("Reshape", ["patches", "grid"], ["flat"], name="flatten"),
              helper.make_node("Transpose", ["flat"], ["seq"], name="tokens", perm=[0, 2, 1]),
              helper.make_node("Shape", ["pixel_values"], ["shape"], name="shape"),
              helper.make_node("Slice", ["shape", "first", "one"], ["batch"], name="batch"),
              helper.make_node("Concat", ["batch", "rest"], ["cls_shape"], name="cls_shape", axis=0),
              helper.make_node("Expand", ["cls", "cls_shape"], ["cls_rows"], name="cls_rows"),
              helper.make_node("Concat", ["cls_rows", "seq"], ["with_cls"], name="with_cls", axis=1),
              helper.make_node("Add", ["with_cls", position], ["embedded"], name="embed"),
              helper.make_node("ReduceMean", ["embedded"], ["pooled"], name="pool", axes=[1], keepdims=0),
              helper.make_node("MatMul", ["pooled", "head.weight"], ["logits"], name="head")]
    return _model(nodes, [_vi("pixel_values", ["N", "C", "H", "W"])], [_vi("logits", ["N", classes])], inits,
                  name="patch_encoder", opset=13)

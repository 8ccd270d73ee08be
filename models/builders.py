"""Tiny hand-built ONNX graphs (2-11 nodes) for tests: one structure each, seeded, opset 17 by default.

Every model takes ``input`` float32 [N, ...] (batch dimension named "N") and returns ``output``.
Nodes are named after their role ("conv1", "bn1", "relu1", ...) so tests can refer to them. The good
builders (``GOOD_BUILDERS``) pass ``onnx.checker.check_model(full_check=True)`` and run in ONNX Runtime;
the ``bad_*`` builders make the inputs the compiler must refuse or repair: fp16, already quantized,
custom domain, control flow around a Conv, opset 7 (Upsample, which the version converter rewrites
into Resize, or the experimental ImageScaler, which it cannot convert).

``with_data_bn_stats`` refits BN statistics to the model's own activations (it runs ONNX Runtime).
This module (with ``dfq_onnx/core/ir.py`` and ``declared_io.py``) may use the protobuf helpers.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = [
    "GOOD_BUILDERS", "bad_already_quantized", "bad_custom_domain", "bad_bf16", "bad_if_conv",
    "conv_fp16", "bad_empty_graph", "bad_loop_conv", "bad_old_opset",
    "concat_branches", "constant_weights", "conv_bn_relu", "conv_bn_relu_residual",
    "conv_clip6", "conv_sequence", "conv_silu", "convtranspose_bn", "fused_stem", "gemm_bn", "matmul_bn",
    "shared_weight",
    "with_data_bn_stats",
]


# --------------------------------------------------------------------------- helpers


def _ir_for(opset: int) -> int:
    """Smallest IR version that ORT and the checker accept for `opset`."""
    if opset <= 8:
        return 3
    if opset <= 10:
        return 5
    return 8 if opset <= 17 else (9 if opset <= 20 else 10)


def _vi(name: str, shape, elem=TensorProto.FLOAT) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, shape)


def _init(name: str, values: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.ascontiguousarray(values), name)


def _model(nodes, inputs, outputs, inits, opset: int = 17, name: str = "tiny",
           extra_opsets: dict[str, int] | None = None, ir_version: int | None = None) -> onnx.ModelProto:
    ir_version = ir_version if ir_version is not None else _ir_for(opset)
    if ir_version < 4:  # IR 3 requires every initializer to be listed as a graph input too
        listed = {i.name for i in inputs}
        inputs = list(inputs) + [_vi(t.name, list(t.dims), t.data_type) for t in inits
                                 if t.name not in listed]
    graph = helper.make_graph(nodes, name, inputs, outputs, initializer=inits)
    opsets = [helper.make_opsetid("", opset)]
    opsets += [helper.make_opsetid(d, v) for d, v in sorted((extra_opsets or {}).items())]
    model = helper.make_model(graph, opset_imports=opsets, producer_name="dfq-onnx-tests")
    model.ir_version = ir_version
    return model


def _conv_w(rng, c_out: int, c_in: int, k: int) -> np.ndarray:
    """He-initialized conv weight [c_out, c_in, k, k]."""
    std = np.sqrt(2.0 / (c_in * k * k))
    return (rng.standard_normal((c_out, c_in, k, k)) * std).astype(np.float32)


def _bn(rng, prefix: str, c: int, x: str, y: str, inits: list) -> onnx.NodeProto:
    """BatchNormalization with random (positive-variance) statistics."""
    gamma = rng.uniform(0.5, 1.5, c).astype(np.float32)
    beta = rng.normal(0.0, 0.3, c).astype(np.float32)
    mean = rng.normal(0.0, 0.3, c).astype(np.float32)
    var = rng.uniform(0.5, 2.0, c).astype(np.float32)
    names = [f"{prefix}.{p}" for p in ("scale", "bias", "mean", "var")]
    inits += [_init(n, v) for n, v in zip(names, (gamma, beta, mean, var), strict=True)]
    return helper.make_node("BatchNormalization", [x, *names], [y], name=prefix, epsilon=1e-5)


def _conv(name: str, x: str, w: str, y: str, b: str | None = None, **attrs) -> onnx.NodeProto:
    attrs.setdefault("pads", [1, 1, 1, 1])
    return helper.make_node("Conv", [x, w] + ([b] if b else []), [y], name=name, **attrs)


# --------------------------------------------------------------------------- good models


def conv_bn_relu(c_in: int = 3, c_mid: int = 8, c_out: int = 4, hw: int | None = 8, seed: int = 0,
                 opset: int = 17, init_as_inputs: bool = False, relu_output: bool = False) -> onnx.ModelProto:
    """input -> conv1 (no bias) -> bn1 -> relu1 -> conv2 (bias) -> output.

    `hw=None` makes the spatial dimensions dynamic ("H", "W"). `init_as_inputs` writes IR 3, which
    lists every initializer as a graph input too (as old exporters did). `relu_output=True` ends the
    graph at relu1 (3 nodes, relu1 writes `output`).
    """
    rng = np.random.default_rng(seed)
    inits = [_init("conv1.weight", _conv_w(rng, c_mid, c_in, 3)),
             _init("conv2.weight", _conv_w(rng, c_out, c_mid, 3)),
             _init("conv2.bias", rng.normal(0, 0.1, c_out).astype(np.float32))]
    nodes = [_conv("conv1", "input", "conv1.weight", "conv1_out"),
             _bn(rng, "bn1", c_mid, "conv1_out", "bn1_out", inits),
             helper.make_node("Relu", ["bn1_out"], ["relu1_out"], name="relu1"),
             _conv("conv2", "relu1_out", "conv2.weight", "output", "conv2.bias")]
    if relu_output:
        nodes = nodes[:2] + [helper.make_node("Relu", ["bn1_out"], ["output"], name="relu1")]
        inits = [t for t in inits if not t.name.startswith("conv2.")]
    h, w = (hw, hw) if hw is not None else ("H", "W")
    out_c = c_mid if relu_output else c_out
    return _model(nodes, [_vi("input", ["N", c_in, h, w])], [_vi("output", ["N", out_c, h, w])], inits, opset,
                  "conv_bn_relu", ir_version=3 if init_as_inputs else None)


def sigmoid_map(c_in: int = 3, c_mid: int = 8, hw: int = 8, gain: float = 1.0, seed: int = 0
                ) -> onnx.ModelProto:
    """A probability map, as saliency / segmentation decoders end: input -> conv1 -> bn1 -> relu1 -> conv2
    (one channel, weights x `gain`) -> Resize (x2, linear) -> Sigmoid -> output [N, 1, 2 hw, 2 hw]."""
    rng = np.random.default_rng(seed)
    inits = [_init("conv1.weight", _conv_w(rng, c_mid, c_in, 3)),
             _init("conv2.weight", _conv_w(rng, 1, c_mid, 3) * np.float32(gain)),
             _init("conv2.bias", np.zeros(1, np.float32)),
             _init("resize.scales", np.array([1, 1, 2, 2], np.float32))]
    nodes = [_conv("conv1", "input", "conv1.weight", "conv1_out"),
             _bn(rng, "bn1", c_mid, "conv1_out", "bn1_out", inits),
             helper.make_node("Relu", ["bn1_out"], ["relu1_out"], name="relu1"),
             _conv("conv2", "relu1_out", "conv2.weight", "logit", "conv2.bias"),
             helper.make_node("Resize", ["logit", "", "resize.scales"], ["logit_up"], name="resize",
                              mode="linear"),
             helper.make_node("Sigmoid", ["logit_up"], ["output"], name="sigmoid")]
    return _model(nodes, [_vi("input", ["N", c_in, hw, hw])], [_vi("output", ["N", 1, 2 * hw, 2 * hw])],
                  inits, name="sigmoid_map")


def softmax_classifier(c_in: int = 3, c_mid: int = 8, hw: int = 8, hidden: int = 16, classes: int = 4,
                       gain: float = 1.0, seed: int = 0) -> onnx.ModelProto:
    """input -> conv1 -> bn1 -> relu1 -> GlobalAveragePool -> Flatten -> fc1 -> Relu -> fc2 (x `gain`)
    -> Softmax -> output [N, classes]: a classifier whose logits are two BN-free layers past the BN."""
    rng = np.random.default_rng(seed)
    inits = [_init("conv1.weight", _conv_w(rng, c_mid, c_in, 3)),
             _init("fc1.weight", (rng.standard_normal((c_mid, hidden)) / np.sqrt(c_mid)).astype(np.float32)),
             _init("fc1.bias", rng.normal(0, 0.1, hidden).astype(np.float32)),
             _init("fc2.weight", (rng.standard_normal((hidden, classes)) * gain / np.sqrt(hidden))
                   .astype(np.float32)),
             _init("fc2.bias", np.zeros(classes, np.float32))]
    nodes = [_conv("conv1", "input", "conv1.weight", "conv1_out"),
             _bn(rng, "bn1", c_mid, "conv1_out", "bn1_out", inits),
             helper.make_node("Relu", ["bn1_out"], ["relu1_out"], name="relu1"),
             helper.make_node("GlobalAveragePool", ["relu1_out"], ["pool"], name="gap"),
             helper.make_node("Flatten", ["pool"], ["flat"], name="flatten"),
             helper.make_node("Gemm", ["flat", "fc1.weight", "fc1.bias"], ["fc1_out"], name="fc1"),
             helper.make_node("Relu", ["fc1_out"], ["fc1_relu"], name="relu2"),
             helper.make_node("Gemm", ["fc1_relu", "fc2.weight", "fc2.bias"], ["logits"], name="fc2"),
             helper.make_node("Softmax", ["logits"], ["output"], name="softmax", axis=-1)]
    return _model(nodes, [_vi("input", ["N", c_in, hw, hw])], [_vi("output", ["N", classes])], inits,
                  name="softmax_classifier")


def conv_bn_relu_residual(c: int = 8, hw: int = 8, classes: int = 10, seed: int = 0,
                          matmul_head: bool = False) -> onnx.ModelProto:
    """A residual block and a classifier head (10 nodes)::

        input ─┬─ conv1 ─ bn1 ─ relu1 ─ conv2 ─ bn2 ─┐
               └──────────────────────────────────── add ─ relu2 ─ gap ─ flatten ─ fc ─ output

    `matmul_head`: fc is a bias-free MatMul (as tf2onnx writes a Keras Dense whose bias it folded
    away; with a bias Add, Normalize makes it a Gemm) instead of Gemm.
    """
    rng = np.random.default_rng(seed)
    inits = [_init("conv1.weight", _conv_w(rng, c, c, 3)), _init("conv2.weight", _conv_w(rng, c, c, 3)),
             _init("fc.weight", (rng.standard_normal((classes, c)) / np.sqrt(c)).astype(np.float32)),
             _init("fc.bias", rng.normal(0, 0.1, classes).astype(np.float32))]
    nodes = [_conv("conv1", "input", "conv1.weight", "conv1_out"),
             _bn(rng, "bn1", c, "conv1_out", "bn1_out", inits),
             helper.make_node("Relu", ["bn1_out"], ["relu1_out"], name="relu1"),
             _conv("conv2", "relu1_out", "conv2.weight", "conv2_out"),
             _bn(rng, "bn2", c, "conv2_out", "bn2_out", inits),
             helper.make_node("Add", ["input", "bn2_out"], ["add_out"], name="add"),
             helper.make_node("Relu", ["add_out"], ["relu2_out"], name="relu2"),
             helper.make_node("GlobalAveragePool", ["relu2_out"], ["gap_out"], name="gap"),
             helper.make_node("Flatten", ["gap_out"], ["flat_out"], name="flatten", axis=1),
             helper.make_node("Gemm", ["flat_out", "fc.weight", "fc.bias"], ["output"], name="fc", transB=1)]
    if matmul_head:
        inits[2] = _init("fc.weight", numpy_helper.to_array(inits[2]).T.copy())
        del inits[3]
        nodes[-1] = helper.make_node("MatMul", ["flat_out", "fc.weight"], ["output"], name="fc")
    return _model(nodes, [_vi("input", ["N", c, hw, hw])], [_vi("output", ["N", classes])], inits,
                  name="conv_bn_relu_residual")


def gemm_bn(k: int = 16, n: int = 8, trans_b: int = 0, bias: bool = True, seed: int = 0) -> onnx.ModelProto:
    """input [N, k] -> fc (Gemm, transB=`trans_b`) -> bn -> output [N, n]."""
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((k, n)) / np.sqrt(k)).astype(np.float32)
    inits = [_init("fc.weight", w.T.copy() if trans_b else w)]
    ins = ["input", "fc.weight"]
    if bias:
        inits.append(_init("fc.bias", rng.normal(0, 0.1, n).astype(np.float32)))
        ins.append("fc.bias")
    nodes = [helper.make_node("Gemm", ins, ["fc_out"], name="fc", transB=trans_b),
             _bn(rng, "bn", n, "fc_out", "output", inits)]
    return _model(nodes, [_vi("input", ["N", k])], [_vi("output", ["N", n])], inits, name="gemm_bn")


def matmul_bn(k: int = 16, n: int = 8, seed: int = 0) -> onnx.ModelProto:
    """input [N, k] -> mm (MatMul, 2-D constant weight) -> bn -> output [N, n]."""
    rng = np.random.default_rng(seed)
    inits = [_init("mm.weight", (rng.standard_normal((k, n)) / np.sqrt(k)).astype(np.float32))]
    nodes = [helper.make_node("MatMul", ["input", "mm.weight"], ["mm_out"], name="mm"),
             _bn(rng, "bn", n, "mm_out", "output", inits)]
    return _model(nodes, [_vi("input", ["N", k])], [_vi("output", ["N", n])], inits, name="matmul_bn")


def contrib_gelu_mlp(k: int = 16, n: int = 32, seed: int = 0) -> onnx.ModelProto:
    """input [N, k] -> fc1 (MatMul) -> FastGelu (com.microsoft, bias fused, as ORT's transformer
    optimizer writes it) -> fc2 (MatMul) -> output [N, k]: ONNX shape inference cannot type past it."""
    rng = np.random.default_rng(seed)
    inits = [_init("fc1.weight", (rng.standard_normal((k, n)) / np.sqrt(k)).astype(np.float32)),
             _init("fc1.bias", (0.1 * rng.standard_normal(n)).astype(np.float32)),
             _init("fc2.weight", (rng.standard_normal((n, k)) / np.sqrt(n)).astype(np.float32))]
    nodes = [helper.make_node("MatMul", ["input", "fc1.weight"], ["fc1_out"], name="fc1"),
             helper.make_node("FastGelu", ["fc1_out", "fc1.bias"], ["gelu_out"], name="gelu",
                              domain="com.microsoft"),
             helper.make_node("MatMul", ["gelu_out", "fc2.weight"], ["output"], name="fc2")]
    return _model(nodes, [_vi("input", ["N", k])], [_vi("output", ["N", k])], inits, name="contrib_gelu_mlp",
                  extra_opsets={"com.microsoft": 1})


def convtranspose_bn(c_in: int = 4, c_out: int = 6, hw: int = 5, group: int = 1,
                     seed: int = 0) -> onnx.ModelProto:
    """input -> up (ConvTranspose, stride 2, `group`) -> bn -> output; weight [c_in, c_out/group, 3, 3]."""
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((c_in, c_out // group, 3, 3)) / np.sqrt(9 * c_in / group)).astype(np.float32)
    inits = [_init("up.weight", w)]
    nodes = [helper.make_node("ConvTranspose", ["input", "up.weight"], ["up_out"], name="up", group=group,
                              strides=[2, 2]),
             _bn(rng, "bn", c_out, "up_out", "output", inits)]
    out_hw = 2 * hw + 1   # (hw - 1) * stride + kernel
    return _model(nodes, [_vi("input", ["N", c_in, hw, hw])], [_vi("output", ["N", c_out, out_hw, out_hw])],
                  inits, name="convtranspose_bn")


def concat_branches(c_in: int = 3, c: int = 4, hw: int = 8, seed: int = 0) -> onnx.ModelProto:
    """Two conv-bn-relu branches on the input, concatenated on channels, max-pooled, then a conv::

        input ─┬─ conv_a ─ bn_a ─ relu_a ─┐
               └─ conv_b ─ bn_b ─ relu_b ─ concat ─ pool ─ conv_c ─ output
    """
    rng = np.random.default_rng(seed)
    inits = [_init("conv_a.weight", _conv_w(rng, c, c_in, 3)),
             _init("conv_b.weight", _conv_w(rng, c, c_in, 1)),
             _init("conv_c.weight", _conv_w(rng, c, 2 * c, 3)),
             _init("conv_c.bias", rng.normal(0, 0.1, c).astype(np.float32))]
    nodes = []
    for br, pads in (("a", [1, 1, 1, 1]), ("b", [0, 0, 0, 0])):
        nodes += [_conv(f"conv_{br}", "input", f"conv_{br}.weight", f"conv_{br}_out", pads=pads),
                  _bn(rng, f"bn_{br}", c, f"conv_{br}_out", f"bn_{br}_out", inits),
                  helper.make_node("Relu", [f"bn_{br}_out"], [f"relu_{br}_out"], name=f"relu_{br}")]
    nodes += [helper.make_node("Concat", ["relu_a_out", "relu_b_out"], ["cat_out"], name="concat", axis=1),
              helper.make_node("MaxPool", ["cat_out"], ["pool_out"], name="pool", kernel_shape=[2, 2],
                               strides=[2, 2]),
              _conv("conv_c", "pool_out", "conv_c.weight", "output", "conv_c.bias")]
    return _model(nodes, [_vi("input", ["N", c_in, hw, hw])], [_vi("output", ["N", c, hw // 2, hw // 2])],
                  inits, name="concat_branches")


def conv_clip6(c_in: int = 3, c: int = 8, c_out: int = 4, hw: int = 8, seed: int = 0) -> onnx.ModelProto:
    """MobileNet-style: conv1-bn1-ReLU6, depthwise dw (group=c)-bn2-ReLU6, pointwise pw -> output."""
    rng = np.random.default_rng(seed)
    inits = [_init("conv1.weight", _conv_w(rng, c, c_in, 3)), _init("dw.weight", _conv_w(rng, c, 1, 3)),
             _init("pw.weight", _conv_w(rng, c_out, c, 1)),
             _init("pw.bias", rng.normal(0, 0.1, c_out).astype(np.float32)),
             _init("clip.min", np.array(0.0, np.float32)), _init("clip.max", np.array(6.0, np.float32))]
    nodes = [_conv("conv1", "input", "conv1.weight", "conv1_out"),
             _bn(rng, "bn1", c, "conv1_out", "bn1_out", inits),
             helper.make_node("Clip", ["bn1_out", "clip.min", "clip.max"], ["clip1_out"], name="clip1"),
             _conv("dw", "clip1_out", "dw.weight", "dw_out", group=c),
             _bn(rng, "bn2", c, "dw_out", "bn2_out", inits),
             helper.make_node("Clip", ["bn2_out", "clip.min", "clip.max"], ["clip2_out"], name="clip2"),
             _conv("pw", "clip2_out", "pw.weight", "output", "pw.bias", pads=[0, 0, 0, 0])]
    return _model(nodes, [_vi("input", ["N", c_in, hw, hw])], [_vi("output", ["N", c_out, hw, hw])], inits,
                  name="conv_clip6")


def constant_weights(c_in: int = 3, c: int = 8, classes: int = 5, hw: int = 8, seed: int = 0,
                     opset: int = 17) -> onnx.ModelProto:
    """Weights in `Constant` nodes (Paddle style) and a PyTorch-style shape subgraph before a MatMul::

        input ─ conv ─ relu ─ gap ─┬──────────────────────────────── reshape ─ fc (MatMul) ─ output
                                   └─ shape ─ gather[1] ─ concat([-1], C) ─┘
    The shape subgraph only reads the static channel dimension, so it folds to the constant [-1, C].
    """
    rng = np.random.default_rng(seed)

    def const(name, values):
        return helper.make_node("Constant", [], [name], name=f"{name}_const", value=_init(name, values))

    inits = [_init("gather.index", np.array([1], np.int64)), _init("shape.head", np.array([-1], np.int64))]
    nodes = [const("conv.weight", _conv_w(rng, c, c_in, 3)),
             const("conv.bias", rng.normal(0, 0.1, c).astype(np.float32)),
             const("fc.weight", (rng.standard_normal((c, classes)) / np.sqrt(c)).astype(np.float32)),
             _conv("conv", "input", "conv.weight", "conv_out", "conv.bias"),
             helper.make_node("Relu", ["conv_out"], ["relu_out"], name="relu"),
             helper.make_node("GlobalAveragePool", ["relu_out"], ["gap_out"], name="gap"),
             helper.make_node("Shape", ["gap_out"], ["shape_out"], name="shape"),
             helper.make_node("Gather", ["shape_out", "gather.index"], ["gather_out"], name="gather", axis=0),
             helper.make_node("Concat", ["shape.head", "gather_out"], ["newshape"], name="concat", axis=0),
             helper.make_node("Reshape", ["gap_out", "newshape"], ["flat_out"], name="reshape"),
             helper.make_node("MatMul", ["flat_out", "fc.weight"], ["output"], name="fc")]
    return _model(nodes, [_vi("input", ["N", c_in, hw, hw])], [_vi("output", ["N", classes])], inits, opset,
                  "constant_weights")


def shared_weight(c: int = 4, hw: int = 8, seed: int = 0) -> onnx.ModelProto:
    """One weight initializer read by two convs; only conv_a is followed by a BN::

        input ─┬─ conv_a(W) ─ bn ─ relu ─┐
               └─ conv_b(W) ──────────── add ─ output
    """
    rng = np.random.default_rng(seed)
    inits = [_init("shared.weight", _conv_w(rng, c, c, 3))]
    nodes = [_conv("conv_a", "input", "shared.weight", "conv_a_out"),
             _bn(rng, "bn", c, "conv_a_out", "bn_out", inits),
             helper.make_node("Relu", ["bn_out"], ["relu_out"], name="relu"),
             _conv("conv_b", "input", "shared.weight", "conv_b_out"),
             helper.make_node("Add", ["relu_out", "conv_b_out"], ["output"], name="add")]
    return _model(nodes, [_vi("input", ["N", c, hw, hw])], [_vi("output", ["N", c, hw, hw])], inits,
                  name="shared_weight")


def conv_silu(c_in: int = 3, c: int = 8, c_out: int = 4, hw: int = 8, seed: int = 0,
              tail: bool = False) -> onnx.ModelProto:
    """No BN: conv1 (bias) -> x * sigmoid(x) (SiLU as sigmoid + mul) -> conv2 -> output.

    `tail=True` appends a detector-style decoding after the last weighted layer:
    conv2 -> tail_sigmoid -> tail_mul (x constant 4.0) -> output.
    """
    rng = np.random.default_rng(seed)
    inits = [_init("conv1.weight", _conv_w(rng, c, c_in, 3)),
             _init("conv1.bias", rng.normal(0, 0.1, c).astype(np.float32)),
             _init("conv2.weight", _conv_w(rng, c_out, c, 3)),
             _init("conv2.bias", rng.normal(0, 0.1, c_out).astype(np.float32))]
    conv2_out = "conv2_out" if tail else "output"
    nodes = [_conv("conv1", "input", "conv1.weight", "conv1_out", "conv1.bias"),
             helper.make_node("Sigmoid", ["conv1_out"], ["sig_out"], name="sigmoid"),
             helper.make_node("Mul", ["conv1_out", "sig_out"], ["silu_out"], name="mul"),
             _conv("conv2", "silu_out", "conv2.weight", conv2_out, "conv2.bias")]
    if tail:
        inits.append(_init("tail.stride", np.array(4.0, np.float32)))
        nodes += [helper.make_node("Sigmoid", ["conv2_out"], ["tail_sig_out"], name="tail_sigmoid"),
                  helper.make_node("Mul", ["tail_sig_out", "tail.stride"], ["output"], name="tail_mul")]
    return _model(nodes, [_vi("input", ["N", c_in, hw, hw])], [_vi("output", ["N", c_out, hw, hw])], inits,
                  name="conv_silu")


def fused_stem(pixel_range: tuple[float, float] | None, c_in: int = 3, c: int = 16, c_out: int = 4,
               hw: int = 16, seed: int = 0) -> onnx.ModelProto:
    """A BN-free export "trained" on inputs in `pixel_range` (None: standardized): conv1 with a BatchNorm
    fused in -> SiLU -> conv2 -> output, as Ultralytics writes YOLOv8. The fold uses the statistics of
    conv1's raw response on blocky random images in that range (4 x 4 cells, uniform per cell and
    channel): W' = gamma / sigma W, b' = beta - gamma mu / sigma, gamma ~ U(0.5, 2), beta ~ N(0, 1)."""
    rng = np.random.default_rng(seed)
    w = _conv_w(rng, c, c_in, 3).astype(np.float64)
    cells = rng.uniform(0.0, 1.0, (64, c_in, 4, 4))
    u = np.kron(cells, np.ones((1, 1, -(-hw // 4), -(-hw // 4))))[:, :, :hw, :hw]
    lo, hi = pixel_range or (None, None)
    x = (u - 0.5) / np.sqrt(1 / 12) if pixel_range is None else lo + (hi - lo) * u
    patches = np.lib.stride_tricks.sliding_window_view(np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1))), (3, 3),
                                                       axis=(2, 3))           # [N, C, H, W, 3, 3]
    y = np.einsum("nchwij,kcij->nkhw", patches, w, optimize=True)
    mu, sigma = y.mean(axis=(0, 2, 3)), y.std(axis=(0, 2, 3))
    gamma, beta = rng.uniform(0.5, 2.0, c), rng.normal(0.0, 1.0, c)
    inits = [_init("conv1.weight", (w * (gamma / sigma)[:, None, None, None]).astype(np.float32)),
             _init("conv1.bias", (beta - gamma * mu / sigma).astype(np.float32)),
             _init("conv2.weight", _conv_w(rng, c_out, c, 3)),
             _init("conv2.bias", rng.normal(0, 0.1, c_out).astype(np.float32))]
    nodes = [_conv("conv1", "input", "conv1.weight", "conv1_out", "conv1.bias"),
             helper.make_node("Sigmoid", ["conv1_out"], ["sig_out"], name="sigmoid"),
             helper.make_node("Mul", ["conv1_out", "sig_out"], ["silu_out"], name="mul"),
             _conv("conv2", "silu_out", "conv2.weight", "output", "conv2.bias")]
    return _model(nodes, [_vi("input", ["N", c_in, hw, hw])], [_vi("output", ["N", c_out, hw, hw])], inits,
                  name="fused_stem")


def fused_stem_decoder(pixel_range: tuple[float, float] | None, c: int = 16, hw: int = 16,
                       seed: int = 0) -> onnx.ModelProto:
    """`fused_stem` with an upsampling head whose BatchNorm stays unfused, as torch exports a CenterNet-style
    decoder (it fuses Conv + BN, not ConvTranspose + BN): ... conv2 -> up (ConvTranspose 2 x 2, stride 2)
    -> bn -> output [N, 4, 2 hw, 2 hw]. The model has BN statistics, none at the input's first layer."""
    model = fused_stem(pixel_range, c=c, hw=hw, seed=seed)
    rng = np.random.default_rng(seed + 1000)
    g = model.graph
    g.node[-1].output[0] = "conv2_out"
    w = (rng.standard_normal((4, 4, 2, 2)) / np.sqrt(16)).astype(np.float32)
    inits: list = [_init("up.weight", w)]
    g.node.extend([helper.make_node("ConvTranspose", ["conv2_out", "up.weight"], ["up_out"], name="up",
                                    strides=[2, 2]),
                   _bn(rng, "bn", 4, "up_out", "output", inits)])
    g.initializer.extend(inits)
    del g.output[:]
    g.output.append(_vi("output", ["N", 4, 2 * hw, 2 * hw]))
    g.name = "fused_stem_decoder"
    return model


def conv_sequence(c_in: int = 3, c: int = 4, h: int = 4, w: int | None = 8, classes: int = 6, seed: int = 0,
                  opset: int = 17, time_major: bool = False, bn: bool = True, batch: int | str = "N"
                  ) -> onnx.ModelProto:
    """A tiny CTC-style recognizer: per column of the image, a distribution over `classes`::

        input [N, 3, h, W] ─ conv1 ─ bn1 ─ relu1 ─ reshape [N, c*h, W] ─ transpose [N, W, c*h]
                                                │                        ─ fc (MatMul + Add) ─ softmax
                            shape ─ gather[3] ─ concat([0, -1], W) ─┘      output [N, W, classes]

    The reshape's target reads the width from a Shape subgraph, as exporters write it, so with
    `w=None` (dynamic width "W") nothing may fold it into a constant. `time_major=True` transposes to
    [W, N, c*h] instead and writes the output [W, N, classes] (a PyTorch CRNN's layout, batch on axis
    1); `bn=False` leaves out bn1 (an export with its BNs fused: no statistics); `batch=1` pins the batch
    (ddddocr's OCR export: input [1, 1, 64, W], output [T, 1, C]).
    """
    rng = np.random.default_rng(seed)
    inits = [_init("conv1.weight", _conv_w(rng, c, c_in, 3)),
             _init("fc.weight", (rng.standard_normal((c * h, classes)) / np.sqrt(c * h)).astype(np.float32)),
             _init("fc.bias", rng.normal(0, 0.1, classes).astype(np.float32)),
             _init("gather.index", np.array([3], np.int64)), _init("shape.head", np.array([0, -1], np.int64))]
    nodes = [_conv("conv1", "input", "conv1.weight", "conv1_out"),
             _bn(rng, "bn1", c, "conv1_out", "bn1_out", inits),
             helper.make_node("Relu", ["bn1_out"], ["relu1_out"], name="relu1"),
             helper.make_node("Shape", ["relu1_out"], ["shape_out"], name="shape"),
             helper.make_node("Gather", ["shape_out", "gather.index"], ["width"], name="gather", axis=0),
             helper.make_node("Concat", ["shape.head", "width"], ["newshape"], name="concat", axis=0),
             helper.make_node("Reshape", ["relu1_out", "newshape"], ["cols"], name="reshape"),
             helper.make_node("Transpose", ["cols"], ["seq"], name="transpose",
                              perm=[2, 0, 1] if time_major else [0, 2, 1]),
             helper.make_node("MatMul", ["seq", "fc.weight"], ["fc_mm"], name="fc"),
             helper.make_node("Add", ["fc_mm", "fc.bias"], ["logits"], name="fc_add"),
             helper.make_node("Softmax", ["logits"], ["output"], name="softmax", axis=-1)]
    if not bn:
        nodes[1:3] = [helper.make_node("Relu", ["conv1_out"], ["relu1_out"], name="relu1")]
        inits = [t for t in inits if not t.name.startswith("bn1")]
    width = w if w is not None else "W"
    out = [width, batch, classes] if time_major else [batch, width, classes]
    return _model(nodes, [_vi("input", [batch, c_in, h, width])], [_vi("output", out)], inits,
                  opset, "conv_sequence")


GOOD_BUILDERS = {"conv_bn_relu": conv_bn_relu, "conv_bn_relu_residual": conv_bn_relu_residual,
                 "gemm_bn": gemm_bn, "matmul_bn": matmul_bn, "concat_branches": concat_branches,
                 "conv_clip6": conv_clip6, "constant_weights": constant_weights,
                 "shared_weight": shared_weight, "conv_silu": conv_silu, "conv_sequence": conv_sequence}


# --------------------------------------------------------------------------- bad inputs


def conv_fp16(c: int = 3, hw: int = 8, seed: int = 0) -> onnx.ModelProto:
    """A float16 conv model (input, weight and output float16): valid ONNX that runs in ORT; compiled in
    float32 and written with float16 input / output (dfq_onnx/core/float16.py)."""
    rng = np.random.default_rng(seed)
    inits = [_init("conv.weight", _conv_w(rng, 4, c, 3).astype(np.float16))]
    nodes = [_conv("conv", "input", "conv.weight", "output")]
    return _model(nodes, [_vi("input", ["N", c, hw, hw], TensorProto.FLOAT16)],
                  [_vi("output", ["N", 4, hw, hw], TensorProto.FLOAT16)], inits, name="fp16")


def bad_bf16(c: int = 3, hw: int = 8) -> onnx.ModelProto:
    """A bfloat16 conv model (input, weight and output bfloat16): valid ONNX, refused by Normalize."""
    w = helper.make_tensor("conv.weight", TensorProto.BFLOAT16, [4, c, 3, 3], np.ones(4 * c * 9).tolist())
    nodes = [_conv("conv", "input", "conv.weight", "output")]
    return _model(nodes, [_vi("input", ["N", c, hw, hw], TensorProto.BFLOAT16)],
                  [_vi("output", ["N", 4, hw, hw], TensorProto.BFLOAT16)], [w], name="bf16")


def bad_already_quantized(c: int = 3, hw: int = 8, seed: int = 0) -> onnx.ModelProto:
    """A QDQ model: input -> q_in (QuantizeLinear) -> dq_in -> conv -> output."""
    rng = np.random.default_rng(seed)
    inits = [_init("conv.weight", _conv_w(rng, 4, c, 3)), _init("in.scale", np.array(0.02, np.float32)),
             _init("in.zero_point", np.array(128, np.uint8))]
    nodes = [helper.make_node("QuantizeLinear", ["input", "in.scale", "in.zero_point"], ["input_q"],
                              name="q_in"),
             helper.make_node("DequantizeLinear", ["input_q", "in.scale", "in.zero_point"], ["input_dq"],
                              name="dq_in"),
             _conv("conv", "input_dq", "conv.weight", "output")]
    return _model(nodes, [_vi("input", ["N", c, hw, hw])], [_vi("output", ["N", 4, hw, hw])], inits,
                  name="already_quantized")


def bad_custom_domain(c: int = 3, hw: int = 8, seed: int = 0) -> onnx.ModelProto:
    """conv -> custom (com.example::FancyAct) -> output. Passes the checker; ORT cannot run it."""
    rng = np.random.default_rng(seed)
    inits = [_init("conv.weight", _conv_w(rng, 4, c, 3))]
    nodes = [_conv("conv", "input", "conv.weight", "conv_out"),
             helper.make_node("FancyAct", ["conv_out"], ["output"], name="custom", domain="com.example")]
    return _model(nodes, [_vi("input", ["N", c, hw, hw])], [_vi("output", ["N", 4, hw, hw])], inits,
                  name="custom_domain", extra_opsets={"com.example": 1})


def bad_if_conv(c: int = 3, hw: int = 8, seed: int = 0, merged: bool = False,
                after: bool = False) -> onnx.ModelProto:
    """An If node ('branch') on a bool input 'flag' whose then-branch holds a Conv ('branch_conv');
    `merged`: the else-branch holds one too (two models merged behind an input flag, as Optimum merges
    a decoder with and without its cache); `after`: a Relu after the If in the outer graph."""
    rng = np.random.default_rng(seed)
    inits = [_init("conv.weight", _conv_w(rng, c, c, 3))]
    then_g = helper.make_graph([_conv("branch_conv", "input", "conv.weight", "then_out")], "then", [],
                               [_vi("then_out", ["N", c, hw, hw])])
    other = (_conv("else_conv", "input", "conv.weight", "else_out") if merged else
             helper.make_node("Identity", ["input"], ["else_out"], name="branch_id"))
    else_g = helper.make_graph([other], "else", [], [_vi("else_out", ["N", c, hw, hw])])
    nodes = [helper.make_node("If", ["flag"], ["if_out" if after else "output"], name="branch",
                              then_branch=then_g, else_branch=else_g)]
    if after:
        nodes.append(helper.make_node("Relu", ["if_out"], ["output"], name="after"))
    return _model(nodes, [_vi("input", ["N", c, hw, hw]), _vi("flag", [], TensorProto.BOOL)],
                  [_vi("output", ["N", c, hw, hw])], inits, name="if_conv")


def bad_old_opset(c: int = 3, hw: int = 8, seed: int = 0, op: str = "Upsample") -> onnx.ModelProto:
    """Opset 7, IR 3 (initializers listed as inputs): conv -> relu -> `op` ('legacy') -> output.

    op="Upsample": Upsample-7 (scales attribute; removed at opset 10). The version converter rewrites
    it into Resize, exactly.
    op="ImageScaler": the experimental op of ONNX <= 1.4 that old model-zoo exports (tiny-YOLOv2)
    carry. It has no schema in today's ONNX, so neither the checker nor the converter accept it.
    """
    rng = np.random.default_rng(seed)
    inits = [_init("conv.weight", _conv_w(rng, 4, c, 3))]
    if op == "Upsample":
        legacy = helper.make_node("Upsample", ["relu_out"], ["output"], name="legacy", mode="nearest",
                                  scales=[1.0, 1.0, 2.0, 2.0])
        out_hw = 2 * hw
    elif op == "ImageScaler":
        legacy = helper.make_node("ImageScaler", ["relu_out"], ["output"], name="legacy", scale=0.5,
                                  bias=[0.1, 0.2, 0.3, 0.4])
        out_hw = hw
    else:
        raise ValueError(f"op must be 'Upsample' or 'ImageScaler', not {op!r}")
    nodes = [_conv("conv", "input", "conv.weight", "conv_out"),
             helper.make_node("Relu", ["conv_out"], ["relu_out"], name="relu"), legacy]
    return _model(nodes, [_vi("input", [1, c, hw, hw])], [_vi("output", [1, 4, out_hw, out_hw])], inits, 7,
                  "old_opset")


def bad_empty_graph() -> onnx.ModelProto:
    """A valid model whose graph has no nodes: 'input' is passed straight to the output."""
    return _model([], [_vi("input", ["N", 4])], [_vi("input", ["N", 4])], [], name="empty")


def bad_loop_conv(c: int = 3, hw: int = 8, seed: int = 0) -> onnx.ModelProto:
    """A Loop ('loop', 2 iterations) whose body applies a Conv ('body_conv') to the carried tensor."""
    rng = np.random.default_rng(seed)
    inits = [_init("conv.weight", _conv_w(rng, c, c, 3)), _init("trips", np.array(2, np.int64)),
             _init("cond", np.array(True))]
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"], name="body_cond"),
         _conv("body_conv", "x_in", "conv.weight", "x_out")], "body",
        [_vi("iter", [1], TensorProto.INT64), _vi("cond_in", None, TensorProto.BOOL),
         _vi("x_in", ["N", c, hw, hw])],
        [_vi("cond_out", None, TensorProto.BOOL), _vi("x_out", ["N", c, hw, hw])])
    nodes = [helper.make_node("Loop", ["trips", "cond", "input"], ["output"], name="loop", body=body)]
    return _model(nodes, [_vi("input", ["N", c, hw, hw])], [_vi("output", ["N", c, hw, hw])], inits,
                  name="loop_conv")


# --------------------------------------------------------------------------- trained-looking statistics


def with_data_bn_stats(model: onnx.ModelProto, n: int = 256, seed: int = 0) -> onnx.ModelProto:
    """A copy whose BatchNormalization mean/var are the statistics of its input on N(0, 1) data.

    That is what a trained network's running statistics are (on its own input distribution), so the
    BN statistics then describe the real activations. BNs are refitted one at a time in graph order,
    since each refit changes the inputs of the ones after it.
    """
    import onnxruntime as ort

    out = onnx.ModelProto()
    out.CopyFrom(model)
    inits = {t.name: t for t in out.graph.initializer}
    inp = out.graph.input[0]
    dims = [d.dim_value if d.HasField("dim_value") else n for d in inp.type.tensor_type.shape.dim]
    x = np.random.default_rng(seed).standard_normal([n] + dims[1:]).astype(np.float32)
    for bn in [node for node in out.graph.node if node.op_type == "BatchNormalization"]:
        probe = onnx.ModelProto()
        probe.CopyFrom(out)
        del probe.graph.output[:]
        probe.graph.output.append(helper.make_empty_tensor_value_info(bn.input[0]))
        sess = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
        z = sess.run(None, {inp.name: x})[0]
        axes = tuple(i for i in range(z.ndim) if i != 1)
        mean, var = z.mean(axis=axes), z.var(axis=axes)
        inits[bn.input[3]].CopyFrom(_init(bn.input[3], mean.astype(np.float32)))
        inits[bn.input[4]].CopyFrom(_init(bn.input[4], np.maximum(var, 1e-6).astype(np.float32)))
    return out


# --------------------------------------------------------------------------- exporter layouts


def affine_input(model: onnx.ModelProto, scale, shift) -> onnx.ModelProto:
    """A copy whose first input (same name) goes through Mul(`scale`) and Add(`shift`), per channel
    [C, 1, 1], before the network: a PyTorch export of an input BatchNorm folded to x * scale + shift."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    name = g.input[0].name
    for node in g.node:
        node.input[:] = [name + "_affine" if x == name else x for x in node.input]
    g.initializer.extend([_init("pre_scale", np.asarray(scale, np.float32).reshape(-1, 1, 1)),
                          _init("pre_shift", np.asarray(shift, np.float32).reshape(-1, 1, 1))])
    g.node.insert(0, helper.make_node("Add", [name + "_scaled", "pre_shift"], [name + "_affine"],
                                      name="pre_add"))
    g.node.insert(0, helper.make_node("Mul", [name, "pre_scale"], [name + "_scaled"], name="pre_mul"))
    return out


def _nchw_reader(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list]:
    """A copy whose nodes read the first input as NAME_nchw (for a new front end to write), and that
    input's [N, C, H, W] dims."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    name = out.graph.input[0].name
    dims = [d.dim_value if d.HasField("dim_value") else d.dim_param
            for d in out.graph.input[0].type.tensor_type.shape.dim]
    for node in out.graph.node:
        node.input[:] = [name + "_nchw" if x == name else x for x in node.input]
    return out, dims


def channels_last(model: onnx.ModelProto, scale: float | None = None, mean=None, std=None,
                  uint8: bool = False) -> onnx.ModelProto:
    """A copy reading its first input [N, H, W, C] (same name) as tf2onnx exports a TF / Keras model:
    the input (`uint8`: of uint8 pixels, Cast to float first), optionally Keras' preprocessing layers
    in the graph (Rescaling: Mul by `scale`; Normalization: Sub `mean`, Div `std`, per channel), then
    Transpose(perm = [0, 3, 1, 2]) into the original [N, C, H, W] graph (its input becomes NAME_nchw)."""
    out, (n, c, h, w) = _nchw_reader(model)
    g, name = out.graph, out.graph.input[0].name
    src, nodes = name, []
    if uint8:
        nodes.append(helper.make_node("Cast", [src], [name + "_float"], name="cast", to=TensorProto.FLOAT))
        src = name + "_float"
    for op, value in (("Mul", scale), ("Sub", mean), ("Div", std)):
        if value is not None:
            g.initializer.append(_init(f"pre_{op}", np.asarray(value, np.float32)))
            nodes.append(helper.make_node(op, [src, f"pre_{op}"], [f"{name}_{op}"], name=f"pre_{op}"))
            src = f"{name}_{op}"
    nodes.append(helper.make_node("Transpose", [src], [name + "_nchw"], name="to_nchw", perm=[0, 3, 1, 2]))
    for node in reversed(nodes):
        g.node.insert(0, node)
    g.input[0].CopyFrom(_vi(name, [n, h, w, c], TensorProto.UINT8 if uint8 else TensorProto.FLOAT))
    return out


def unit_channel_plane(model: onnx.ModelProto, last: bool = False) -> onnx.ModelProto:
    """A copy of a one-channel image model reading its first input as [N, H, W] (same name), made a
    one-channel image in the graph as Keras exports a Conv2D over a spectrogram: Unsqueeze of axis 1
    (`last`: axis 3, then Transpose(perm = [0, 3, 1, 2]), tf2onnx's ExpandDims) into the original
    [N, 1, H, W] graph (its input becomes NAME_nchw)."""
    out, (n, c, h, w) = _nchw_reader(model)
    g, name = out.graph, out.graph.input[0].name
    assert c == 1, "a one-channel model"
    g.initializer.append(_init("plane_axes", np.array([3 if last else 1], np.int64)))
    nodes = [helper.make_node("Unsqueeze", [name, "plane_axes"], [name + ("_nhwc" if last else "_nchw")],
                              name="expand_dims")]
    if last:
        nodes.append(helper.make_node("Transpose", [name + "_nhwc"], [name + "_nchw"], name="to_nchw",
                                      perm=[0, 3, 1, 2]))
    for node in reversed(nodes):
        g.node.insert(0, node)
    g.input[0].CopyFrom(_vi(name, [n, h, w]))
    return out


def pinned_batch(d: int = 16, seed: int = 0) -> onnx.ModelProto:
    """An exporter that specialized the batch inside the graph: input [N, d] declared dynamic, but a
    Reshape to the constant [1, 4, d / 4] (PyTorch's `x.view(1, ...)`, traced at batch 1) only runs at
    N = 1, and the output says so ([1, 4, 4])::

        input [N, d] ─ Gemm ─ Relu ─ Reshape([1, 4, d/4]) ─ MatMul(w [d/4, d/4]) ─► output [1, 4, d/4]
    """
    rng = np.random.default_rng(seed)
    k = d // 4
    inits = [_init("fc.weight", (rng.standard_normal((d, d)) / np.sqrt(d)).astype(np.float32)),
             _init("fc.bias", rng.normal(0, 0.1, d).astype(np.float32)),
             _init("pin", np.array([1, 4, k], np.int64)),
             _init("proj.weight", (rng.standard_normal((k, k)) / np.sqrt(k)).astype(np.float32))]
    nodes = [helper.make_node("Gemm", ["input", "fc.weight", "fc.bias"], ["fc_out"], name="fc", transB=1),
             helper.make_node("Relu", ["fc_out"], ["relu_out"], name="relu"),
             helper.make_node("Reshape", ["relu_out", "pin"], ["pinned"], name="pin_batch"),
             helper.make_node("MatMul", ["pinned", "proj.weight"], ["output"], name="proj")]
    return _model(nodes, [_vi("input", ["N", d])], [_vi("output", [1, 4, k])], inits, name="pinned_batch")


def frame_mlp_conv(frames: int = 12, c: int = 8, seed: int = 0, outputs_named_like_nodes: bool = False
                   ) -> onnx.ModelProto:
    """A frame-wise linear layer before a temporal Conv, as madmom's TCN beat tracker is converted::

        input [N, T, c] ─ MatMul(w [c, c]) ─ Add(b) ─ Elu ─ Transpose [N, c, T] ─ conv (k 3) ─ Relu ─► output

    `outputs_named_like_nodes`: every node's output tensor carries the node's name (madmom's model
    converter: node 'matmul_60' writes tensor 'matmul_60'), so a name the compile derives from a node
    and one it derives from a tensor (`<name>_scale`) are the same string."""
    rng = np.random.default_rng(seed)
    inits = [_init("fc.weight", (rng.standard_normal((c, c)) / np.sqrt(c)).astype(np.float32)),
             _init("fc.bias", rng.normal(0, 0.1, c).astype(np.float32)),
             _init("conv.weight", (rng.standard_normal((c, c, 3)) / np.sqrt(3 * c)).astype(np.float32)),
             _init("conv.bias", rng.normal(0, 0.1, c).astype(np.float32))]
    names = ["fc", "fc_add", "elu", "to_channels", "conv", "relu"]
    outs = names if outputs_named_like_nodes else [f"{n}_out" for n in names]
    outs[-1] = "output"
    nodes = [helper.make_node("MatMul", ["input", "fc.weight"], [outs[0]], name=names[0]),
             helper.make_node("Add", [outs[0], "fc.bias"], [outs[1]], name=names[1]),
             helper.make_node("Elu", [outs[1]], [outs[2]], name=names[2]),
             helper.make_node("Transpose", [outs[2]], [outs[3]], name=names[3], perm=[0, 2, 1]),
             helper.make_node("Conv", [outs[3], "conv.weight", "conv.bias"], [outs[4]], name=names[4],
                              pads=[1, 1]),
             helper.make_node("Relu", [outs[4]], [outs[5]], name=names[5])]
    return _model(nodes, [_vi("input", ["N", frames, c])], [_vi("output", ["N", c, frames])], inits,
                  name="frame_mlp_conv")

"""Fold a constant per-channel scale or shift into the linear layer that produces it (Normalize).

Exporters write a layer's bias or a frozen BatchNormalization as separate elementwise nodes
(Paddle: Conv then Add of the bias; Conv then Mul and Add of the folded BN). ORT's float optimizer
fuses them into the Conv (ConvMulFusion, ConvAddFusion, MatMulAddFusion), and so does its quantizer's
pre-processing, but a quantizer that keeps them separate puts them between Q/DQ pairs as float ops.
With y = W x + b the layer's output and c a constant broadcast along the output channels only:

    Mul(y, c) = (c W) x + c b         W scaled along its output-channel axis
    Add(y, c) = W x + (b + c)         bias created if absent
    Sub(y, c) = W x + (b - c)         Div(y, c) = (W / c) x + b / c

legal when y is read by that node only and is no graph output, the weight (and bias) are constants
read by this layer only, and c is finite (non-zero for Div). Layers: Conv, ConvTranspose (group 1 or
scalar c), Gemm (no transA), MatMul with a 2-D constant weight and a 2-D input (an Add turns it into
a Gemm, as ORT's MatMulAddFusion does).
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from dfq_onnx.core.graph_utils import WEIGHTED_LAYERS, const_values, is_const, is_graph_output

OPS = ("Mul", "Add", "Sub", "Div")


def out_channels(layer: gs.Node) -> int | None:
    w = layer.inputs[1]
    if layer.op == "Conv":
        return w.shape[0]
    if layer.op == "ConvTranspose":
        return w.shape[1] * layer.attrs.get("group", 1)
    if layer.op == "Gemm":
        return w.shape[0] if layer.attrs.get("transB", 0) else w.shape[1]
    return w.shape[1]


def _per_channel(c: np.ndarray, layer: gs.Node, rank: int | None) -> np.ndarray | None:
    """`c` as a vector over the layer's output channels, if it broadcasts along them only."""
    n = out_channels(layer)
    if c.size == 1:
        return np.full(n, float(c.reshape(-1)[0]), np.float64)
    axis_from_end = (rank - 2) if layer.op in ("Conv", "ConvTranspose") and rank else 0 if rank else None
    if axis_from_end is None or c.ndim > rank:
        return None
    shape = [1] * (rank - c.ndim) + list(c.shape)
    want = [1] * rank
    want[rank - 1 - axis_from_end] = n
    return c.reshape(-1).astype(np.float64) if shape == want else None


def layer_ok(layer: gs.Node, y: gs.Tensor, graph: gs.Graph) -> bool:
    if layer.op not in WEIGHTED_LAYERS or len(layer.outputs) != 1 or len(y.outputs) != 1:
        return False
    if is_graph_output(graph, y):
        return False
    w = layer.inputs[1] if len(layer.inputs) > 1 else None
    if not is_const(w) or len(w.outputs) != 1 or w.values.dtype != np.float32 or w.shape is None:
        return False
    if layer.op == "Gemm" and layer.attrs.get("transA", 0):
        return False
    if layer.op == "MatMul" and (len(w.shape) != 2 or layer.inputs[0].shape is None
                                 or len(layer.inputs[0].shape) != 2):
        return False
    bias = layer.inputs[2] if len(layer.inputs) > 2 and layer.inputs[2].name else None
    return bias is None or (is_const(bias) and len(bias.outputs) == 1)


def scale_weight(layer: gs.Node, s: np.ndarray) -> None:
    w = layer.inputs[1]
    values = const_values(w).astype(np.float64)
    if layer.op == "Conv":
        values = values * s.reshape((-1,) + (1,) * (values.ndim - 1))
    elif layer.op == "ConvTranspose":
        values = values * s.reshape((1, -1) + (1,) * (values.ndim - 2))
    elif layer.op == "Gemm" and layer.attrs.get("transB", 0):
        values = values * s[:, None]
    else:
        values = values * s[None, :]
    layer.inputs[1] = gs.Constant(w.name, values.astype(np.float32))


def bias_of(layer: gs.Node, n: int) -> np.ndarray:
    b = layer.inputs[2] if len(layer.inputs) > 2 and layer.inputs[2].name else None
    return np.zeros(n) if b is None else np.broadcast_to(const_values(b).astype(np.float64).reshape(-1), n)


def set_bias(layer: gs.Node, b: np.ndarray, name: str) -> None:
    if layer.op == "MatMul":       # MatMul + bias = Gemm (2-D input, checked)
        layer.op, layer.attrs = "Gemm", {}
    const = gs.Constant(name, b.astype(np.float32))
    if len(layer.inputs) > 2:
        layer.inputs[2] = const
    else:
        layer.inputs.append(const)


def _fold_one(graph: gs.Graph, node: gs.Node) -> bool:
    if len(node.inputs) != 2:
        return False
    commutes = node.op in ("Mul", "Add")
    k = 1 if is_const(node.inputs[1]) else 0 if commutes and is_const(node.inputs[0]) else None
    if k is None or is_const(node.inputs[1 - k]):
        return False
    y = node.inputs[1 - k]
    layer = y.inputs[0] if len(y.inputs) == 1 else None
    if layer is None or not layer_ok(layer, y, graph):
        return False
    c = _per_channel(const_values(node.inputs[k]), layer, len(y.shape) if y.shape is not None else None)
    if c is None or not np.all(np.isfinite(c)) or (node.op == "Div" and np.any(c == 0)):
        return False
    if layer.op == "ConvTranspose" and layer.attrs.get("group", 1) != 1 and np.unique(c).size > 1:
        return False
    n = c.size
    bias = layer.inputs[2] if len(layer.inputs) > 2 and layer.inputs[2].name else None
    if bias is not None and const_values(bias).size not in (1, n):
        return False
    if node.op in ("Add", "Sub") and layer.op == "Gemm" and float(layer.attrs.get("beta", 1.0)) != 1.0:
        return False        # Gemm adds beta * C: a shift folds into C only at beta 1
    b = bias_of(layer, n)
    if node.op in ("Mul", "Div"):
        s = c if node.op == "Mul" else 1.0 / c
        scale_weight(layer, s)
        if len(layer.inputs) > 2 and layer.inputs[2].name:
            set_bias(layer, b * s, layer.inputs[2].name)
    else:
        set_bias(layer, b + c if node.op == "Add" else b - c, f"{layer.name}_bias_folded")
    out = node.outputs[0]
    node.outputs.clear()
    node.inputs.clear()
    layer.outputs[0] = out
    return True


def fold_affine(graph: gs.Graph) -> int:
    """Fold constant per-channel Mul / Add / Sub / Div into the producing layer; returns how many."""
    folded = 0
    for node in [n for n in graph.nodes if n.op in OPS]:
        if node.outputs and _fold_one(graph, node):
            folded += 1
    graph.cleanup()
    return folded

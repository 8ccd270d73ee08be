"""Outlier migration from an activation into the weights that read it (SmoothQuant, Xiao et al. 2023).

A MatMul / Gemm y = X W reads an activation X [..., C] whose channels j have very different ranges
(a LayerNorm output: a few channels 10-100x the rest). A per-tensor activation grid spends its levels
on those few channels. With s > 0 per input channel j,

    y = (X diag(s)^-1) (diag(s) W) = X' W'          X'_j = X_j / s_j,   W'_j,: = s_j W_j,:

computes the same function, and

    s_j = max|X_j|^alpha / max|W_j,:|^(1 - alpha)        (0 < alpha < 1)

moves the ratio alpha of channel j's range from the activation into row j of the weight: alpha -> 1
flattens X' (every channel's range max|X_j|^(1-alpha) max|W_j|^(1-alpha)), alpha -> 0 flattens W'.
Per-channel weight grids (one scale per output column) see the rescaled rows only through the column
maximum, so a moderate alpha costs the weights little. Readers of X sharing it share s (the max over
their rows). s is divided by its geometric mean (a common factor changes no grid).

The division by s is folded into the op that writes X, so no op is added where the tensor is the
MatMuls' only input:

    X = LayerNormalization(h, gamma, beta)    ->  gamma / s, beta / s
    X = Mul(u, g) [-> Add(., b)]              ->  g / s [, b / s]      (g, b constant, per last-axis
                                                                        channel or scalar)

Not the scalar Mul(0.5) that closes a GELU (core/act_functions.gelu_nodes): made per channel, ORT's and
OpenVINO's GELU fusions no longer see it.

When X has other readers (a post-LN residual Add), the writing op(s) are duplicated for the MatMul
readers (X' beside X; the LayerNorm's statistics computed twice). `Shape` readers keep X (same shape).
The rewrite changes the float function only by float32 rounding (tests/test_smoothing.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from dfq_onnx.core.act_functions import gelu_nodes
from dfq_onnx.core.graph_utils import const_values, is_const, node_label

SMOOTHED_OPS = ("MatMul", "Gemm")


@dataclass(frozen=True)
class SmoothGroup:
    """An activation X, the op chain writing it (`tail`: a LayerNormalization, or Mul [+ Add]) and the
    weighted readers (`readers`) whose weights take s; `shared`: X has other readers (tail duplicated)."""

    tensor: str
    tail: tuple[str, ...]
    readers: tuple[str, ...]
    channels: int
    shared: bool


def weight_rows(node: gs.Node) -> np.ndarray | None:
    """The weight as [C_in, C_out] (a view), or None if the node is not a plain X W (+ b)."""
    w = node.inputs[1] if len(node.inputs) > 1 else None
    if w is None or not is_const(w):
        return None
    vals = const_values(w)
    if vals.ndim != 2:
        return None
    if node.op == "Gemm":
        if node.attrs.get("transA", 0):
            return None
        return vals.T if node.attrs.get("transB", 0) else vals
    return vals


def set_weight_rows(node: gs.Node, rows: np.ndarray) -> None:
    """Write [C_in, C_out] `rows` back as the node's weight (transposed for a Gemm with transB)."""
    w = node.inputs[1]
    transposed = node.op == "Gemm" and node.attrs.get("transB", 0)
    w.values = np.ascontiguousarray(rows.T if transposed else rows).astype(const_values(w).dtype)


def _per_channel(t: gs.Tensor, channels: int) -> bool:
    if not is_const(t):
        return False
    v = const_values(t)
    return v.size == 1 or (v.shape[-1] == channels and v.size == channels)


def _tail(graph_readers: dict, x: gs.Variable, channels: int) -> tuple[gs.Node, ...] | None:
    """The op chain writing `x` that can absorb 1 / s (module docstring), or None."""
    if len(x.inputs) != 1:
        return None
    node = x.inputs[0]
    if node.op == "LayerNormalization":
        axis = node.attrs.get("axis", -1)
        rank = len(node.inputs[0].shape) if node.inputs[0].shape is not None else None
        last = axis == -1 or (rank is not None and axis == rank - 1)
        consts = [t for t in node.inputs[1:] if t.name]
        ok = last and len(node.outputs) >= 1 and all(_per_channel(t, channels) for t in consts)
        return (node,) if ok and consts else None
    mul = node
    if node.op == "Add":
        c = [t for t in node.inputs if is_const(t)]
        v = [t for t in node.inputs if not is_const(t)]
        if len(c) != 1 or len(v) != 1 or not _per_channel(c[0], channels) or len(v[0].inputs) != 1:
            return None
        mul = v[0].inputs[0]
        if len(graph_readers.get(v[0].name, [])) != 1:
            return None
    if mul.op != "Mul":
        return None
    c = [t for t in mul.inputs if is_const(t)]
    if len(c) != 1 or len(mul.inputs) != 2 or not _per_channel(c[0], channels):
        return None
    return (mul,) if mul is node else (mul, node)


def find_groups(graph: gs.Graph, static_layers: set[str]) -> list[SmoothGroup]:
    """Activations read by statically quantized MatMul / Gemm layers (`static_layers`, node labels) whose
    writing op chain can absorb a per-channel division (module docstring)."""
    readers: dict[str, list[gs.Node]] = {}
    for n in graph.nodes:
        for t in n.inputs:
            readers.setdefault(t.name, []).append(n)
    gelu = gelu_nodes(graph)        # GELU's closing Mul(0.5): the runtimes fuse GELU only with its scalar
    out = []
    for name, users in readers.items():
        smooth = [n for n in users if n.op in SMOOTHED_OPS and node_label(n) in static_layers
                  and n.inputs[0].name == name and weight_rows(n) is not None
                  and len(readers.get(n.inputs[1].name, [])) == 1]
        if not smooth:
            continue
        channels = {int(weight_rows(n).shape[0]) for n in smooth}
        x = smooth[0].inputs[0]
        if len(channels) != 1 or isinstance(x, gs.Constant):
            continue
        tail = _tail(readers, x, channels.pop())
        if tail is None or any(id(n) in gelu for n in tail):
            continue
        others = [n for n in users if n not in smooth and n.op != "Shape"]
        out.append(SmoothGroup(name, tuple(node_label(n) for n in tail),
                               tuple(node_label(n) for n in smooth), int(weight_rows(smooth[0]).shape[0]),
                               bool(others)))
    return out


def weight_absmax(graph: gs.Graph, group: SmoothGroup) -> np.ndarray:
    """max over the readers' rows of |W_j,:| per input channel j."""
    nodes = {node_label(n): n for n in graph.nodes}
    return np.max([np.abs(weight_rows(nodes[r])).max(axis=1) for r in group.readers], axis=0)


def scales(x_absmax: np.ndarray, w_absmax: np.ndarray, alpha: float) -> np.ndarray:
    """s_j = max|X_j|^alpha / max|W_j|^(1 - alpha), 1 where either is 0, over its geometric mean."""
    x, w = np.asarray(x_absmax, np.float64), np.asarray(w_absmax, np.float64)
    ok = (x > 0) & (w > 0) & np.isfinite(x)
    s = np.ones_like(x)
    s[ok] = np.power(x[ok], alpha) / np.power(w[ok], 1.0 - alpha)
    if ok.any():
        s[ok] /= np.exp(np.mean(np.log(s[ok])))
    return s


def _divided(t: gs.Constant, s: np.ndarray, name: str) -> gs.Constant:
    v = const_values(t).astype(np.float64)
    shape = v.shape if v.size == len(s) else (len(s),)
    return gs.Constant(name, (np.broadcast_to(v.reshape(-1), s.shape) / s).reshape(shape)
                       .astype(const_values(t).dtype))


def apply(graph: gs.Graph, group: SmoothGroup, s: np.ndarray) -> None:
    """Rewrite `graph` in place: the tail writes X / s for the readers, their weights take diag(s) W."""
    nodes = {node_label(n): n for n in graph.nodes}
    tail = [nodes[k] for k in group.tail]
    if group.shared:
        copies, prev = [], None
        for i, n in enumerate(tail):
            ins = [prev if (prev is not None and t is tail[i - 1].outputs[0]) else t for t in n.inputs]
            y = n.outputs[0]
            out = gs.Variable(f"{y.name}/smooth", dtype=y.dtype, shape=y.shape)
            copies.append(gs.Node(n.op, name=f"{node_label(n)}/smooth", attrs=dict(n.attrs), inputs=ins,
                                  outputs=[out]))
            prev = out
        graph.nodes.extend(copies)
        tail = copies
        for r in group.readers:
            nodes[r].inputs[0] = prev
    for i, n in enumerate(tail):
        first = n.op == "LayerNormalization"
        for k, t in enumerate(n.inputs):
            if (k >= 1 if first else is_const(t)) and t.name:
                n.inputs[k] = _divided(t, s, f"{t.name}/smooth{i}_{node_label(n)}")
    for r in group.readers:
        set_weight_rows(nodes[r], weight_rows(nodes[r]).astype(np.float64) * s[:, None])

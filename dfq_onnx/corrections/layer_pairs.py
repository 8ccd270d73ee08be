"""Consecutive linear layers joined by a per-channel scale-equivariant path (CLE, absorption, DF-MPC).

A pair is  first ─► [Relu | Clip(0, hi) | Pad(constant 0, no channel padding) | MaxPool]* ─► second
where every tensor from `first`'s output to `second`'s input has exactly one reader and is not a graph
output (a residual Add, a Concat or a second branch reading it would see the rescaled channels), both
layers are Conv (any group) or plain 2-D Gemm with a constant float weight used by no other node (and an
unshared constant bias, if any), and the channel counts agree. Everything else is reported with a reason.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from dfq_onnx.core.graph_utils import (
    WEIGHTED_LAYERS,
    const_values,
    is_const,
    is_float,
    is_graph_output,
    node_label,
)
from dfq_onnx.corrections.formulas import Linear, valid_tap_fraction

PASSTHROUGH = ("MaxPool",)


@dataclass(frozen=True)
class LayerPair:
    first: gs.Node
    second: gs.Node
    act: str                   # "identity" | "relu" | "clip"
    clip_hi: float             # upper bound of a Clip(0, hi) on the path (inf otherwise)
    padded: bool               # the second layer (or a Pad on the path) pads with zeros
    tensors: tuple[str, ...] = ()   # the path's tensors, first's output to second's input

    @property
    def label(self) -> str:
        return f"{node_label(self.first)} -> {node_label(self.second)}"


def linear_kind(node: gs.Node) -> Linear | None:
    """The node as a `Linear` when its weight can be rescaled per channel, else None."""
    if len(node.inputs) < 2 or not is_const(node.inputs[1]) or not is_float(node.inputs[1]):
        return None
    w = node.inputs[1]
    if len(w.outputs) != 1:
        return None
    if len(node.inputs) > 2 and node.inputs[2].name and (not is_const(node.inputs[2])
                                                         or len(node.inputs[2].outputs) != 1):
        return None
    if node.op == "Conv":
        return Linear("Conv", int(node.attrs.get("group", 1)))
    if node.op == "Gemm" and const_values(w).ndim == 2 and not node.attrs.get("transA", 0) and \
            node.attrs.get("alpha", 1.0) == 1.0 and node.attrs.get("beta", 1.0) == 1.0:
        return Linear("Gemm", 1, int(node.attrs.get("transB", 0)))
    return None


def _clip_bounds(node: gs.Node) -> tuple[float, float] | None:
    if "min" in node.attrs or "max" in node.attrs:
        return float(node.attrs.get("min", -np.inf)), float(node.attrs.get("max", np.inf))
    bounds = [-np.inf, np.inf]
    for i, t in enumerate(node.inputs[1:3]):
        if t.name:
            if not is_const(t):
                return None
            bounds[i] = float(const_values(t).reshape(-1)[0])
    return bounds[0], bounds[1]


def _zero_pad(node: gs.Node) -> bool:
    if node.attrs.get("mode", "constant") != "constant" or len(node.inputs) < 2 or \
            not is_const(node.inputs[1]):
        return False
    if len(node.inputs) > 2 and node.inputs[2].name and (
            not is_const(node.inputs[2]) or float(const_values(node.inputs[2]).reshape(-1)[0]) != 0.0):
        return False
    if len(node.inputs) > 3 and node.inputs[3].name:
        return False   # explicit axes: keep it simple
    pads = const_values(node.inputs[1]).astype(np.int64)
    rank = pads.size // 2
    return rank >= 2 and pads[1] == 0 and pads[rank + 1] == 0


def conv_pads(node: gs.Node) -> bool:
    """True when a Conv pads its input (explicit pads or SAME auto_pad)."""
    auto = node.attrs.get("auto_pad", "NOTSET")
    if isinstance(auto, bytes):
        auto = auto.decode()
    return auto in ("SAME_UPPER", "SAME_LOWER") or any(int(p) for p in node.attrs.get("pads", []))


def _follow(graph: gs.Graph, first: gs.Node) -> tuple[LayerPair | None, str]:
    act, hi, padded = "identity", np.inf, False
    t = first.outputs[0]
    path = []
    while True:
        path.append(t.name)
        if is_graph_output(graph, t):
            return None, f"'{t.name}' is a graph output"
        if len(t.outputs) != 1:
            return None, f"'{t.name}' has {len(t.outputs)} readers (residual or branch)"
        node = t.outputs[0]
        if node.op not in ("Conv", "Gemm", "Relu", "Clip", "Pad", *PASSTHROUGH):
            return None, f"'{node_label(node)}' ({node.op}) is not per-channel scale-equivariant"
        if node.inputs[0] is not t:
            return None, f"'{t.name}' is not the first input of '{node_label(node)}'"
        if node.op in ("Conv", "Gemm"):
            break
        if node.op == "Relu":
            act = "clip" if act == "clip" else "relu"
        elif node.op == "Clip":
            bounds = _clip_bounds(node)
            if bounds is None or bounds[0] != 0.0:
                return None, f"'{node_label(node)}' is a Clip whose lower bound is not 0"
            act, hi = ("clip", min(hi, bounds[1])) if np.isfinite(bounds[1]) else (
                "clip" if act == "clip" else "relu", hi)
        elif node.op == "Pad":
            if not _zero_pad(node):
                return None, f"'{node_label(node)}' is not a zero Pad of the spatial axes"
            padded = True
        t = node.outputs[0]
    second = node
    k1, k2 = linear_kind(first), linear_kind(second)
    if k2 is None:
        return None, f"'{node_label(second)}' has no rescalable constant weight (shared, non-float or transA)"
    if (k1.op == "Gemm") != (k2.op == "Gemm"):
        return None, f"'{node_label(first)}' and '{node_label(second)}' mix Conv and Gemm"
    w1, w2 = const_values(first.inputs[1]), const_values(second.inputs[1])
    if w1.shape[k1.out_axis()] != k2.in_channels(w2):
        return None, f"channel counts of '{node_label(first)}' and '{node_label(second)}' differ"
    padded = padded or (second.op == "Conv" and conv_pads(second))
    return LayerPair(first, second, act, hi, padded, tuple(path)), ""


def find_pairs(graph: gs.Graph) -> tuple[list[LayerPair], list[dict[str, str]]]:
    """Pairs in graph order, and {layer, reason} for each linear layer that starts none."""
    pairs, skipped = [], []
    for node in graph.nodes:
        if node.op not in WEIGHTED_LAYERS:
            continue
        if linear_kind(node) is None:
            skipped.append({"layer": node_label(node), "reason": f"{node.op} weight is not a rescalable "
                                                                 "constant used by this node only"})
            continue
        pair, reason = _follow(graph, node)
        if pair is None:
            skipped.append({"layer": node_label(node), "reason": reason})
        else:
            pairs.append(pair)
    return pairs, skipped


def _spatial_pads(node: gs.Node, spatial: tuple[int, ...], kernel, strides, dilations) -> list[int]:
    n = len(spatial)
    auto = node.attrs.get("auto_pad", "NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        begin, end = [], []
        for a in range(n):
            out = -(-spatial[a] // strides[a])
            total = max((out - 1) * strides[a] + (kernel[a] - 1) * dilations[a] + 1 - spatial[a], 0)
            small, big = total // 2, total - total // 2
            begin.append(small if auto == "SAME_UPPER" else big)
            end.append(big if auto == "SAME_UPPER" else small)
        return begin + end
    if auto == "VALID":
        return [0] * (2 * n)
    return [int(p) for p in node.attrs.get("pads", [0] * (2 * n))]


def tap_fractions(node: gs.Node) -> np.ndarray | None:
    """Per kernel tap of a Conv, the fraction of output positions reading inside the unpadded input --
    its own padding plus a zero `Pad` node right before it (static-shape exports). None when every tap
    always reads data (no padding, a Gemm, or unknown shapes)."""
    if node.op != "Conv" or not is_const(node.inputs[1]):
        return None
    kernel = tuple(int(k) for k in const_values(node.inputs[1]).shape[2:])
    n = len(kernel)
    x = node.inputs[0]
    pre = x.inputs[0] if len(x.inputs) == 1 else None
    extra = [0] * (2 * n)
    if pre is not None and pre.op == "Pad" and _zero_pad(pre):
        pads = const_values(pre.inputs[1]).astype(np.int64)
        rank = pads.size // 2
        extra = [int(p) for p in pads[2:rank]] + [int(p) for p in pads[rank + 2:]]
        x = pre.inputs[0]
    shape = x.shape
    if shape is None or len(shape) != n + 2 or not all(isinstance(d, int) and d > 0 for d in shape[2:]):
        return None
    spatial = tuple(int(d) for d in shape[2:])
    strides = [int(s) for s in node.attrs.get("strides", [1] * n)]
    dilations = [int(d) for d in node.attrs.get("dilations", [1] * n)]
    padded = tuple(s + extra[a] + extra[a + n] for a, s in enumerate(spatial))
    own = _spatial_pads(node, padded, kernel, strides, dilations)
    pads = [own[a] + extra[a] for a in range(n)] + [own[a + n] + extra[a + n] for a in range(n)]
    if not any(pads):
        return None
    return valid_tap_fraction(spatial, kernel, strides, pads, dilations)

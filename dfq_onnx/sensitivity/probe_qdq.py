"""The Q/DQ the probe model writes, as EmitQDQ writes them for the same plan (probe.py's docstring).

Weights: `emitted_weight` gives the float values Emit's DequantizeLinear produces at a bit-width;
activations: one encoding per encoding class from the union of its members' ranges, Relu/Clip absorbed
into a zero-point-0 output encoding, elementwise constants fake-quantized at the default bits.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import onnx_graphsurgeon as gs

from dfq_onnx.backends.qdq import (
    absorb_activations,
    activation_encoding,
    insert_activation_qdq,
    quantize_weight,
    replace_with_dq,
)
from dfq_onnx.core import numerics
from dfq_onnx.core.errors import UnsupportedModelError
from dfq_onnx.core.graph_utils import const_values, node_label
from dfq_onnx.core.state import QuantSpec, Range


def emitted_weight(w: np.ndarray, bias: np.ndarray | None, x_scale: float | None, bits: int,
                   axis: int | None, target) -> tuple[np.ndarray, np.ndarray | None]:
    """Float values of W (and b) after Emit's DequantizeLinear at `bits` (mirrors EmitQDQ).

    s_w = absmax_c(W) / (2^(b-1) - 1), raised so that |b| / (s_x s_w) fits int32;
    W_hat = s_w * clip(round(W / s_w), -(2^(b-1) - 1), 2^(b-1) - 1);  b_hat = s_x s_w round(b / (s_x s_w)).
    Without an input scale (float input) the bias stays float.
    """
    q, scale, qb, bscale = quantize_weight(target, w, bias, x_scale, bits, axis)
    axis = axis if target.per_channel else None
    w_hat = numerics.dequantize(q, scale, np.zeros(scale.shape, np.int64), axis)
    if qb is None:
        return w_hat, bias
    return w_hat, numerics.dequantize(qb, bscale, np.zeros(bscale.shape, np.int64),
                                      0 if bscale.ndim else None)


def activation_encodings(spec: QuantSpec, ranges: Mapping[str, Range], target, bits: int) -> dict:
    """Encoding per activation tensor: the union of its class's ranges (as EmitQDQ computes it)."""
    classes: dict[str, list[str]] = {}
    for t in spec.act_tensors:
        classes.setdefault(spec.encoding_of[t], []).append(t)
    out = {}
    for rep, members in classes.items():
        missing = [t for t in members if t not in ranges]
        if missing:
            raise UnsupportedModelError(f"no activation range for tensor '{missing[0]}'")
        lo, hi = min(ranges[t].lo for t in members), max(ranges[t].hi for t in members)
        out[rep] = activation_encoding(target, lo, hi, bits)
    return {t: out[spec.encoding_of[t]] for t in spec.act_tensors}


def insert_qdq(graph: gs.Graph, spec: QuantSpec, encodings: dict, target) -> dict:
    """Q/DQ on every activation tensor and elementwise constant; returns DQ tensor name -> encoding."""
    absorb_activations(graph, spec)
    tensors, shared, by_dq = graph.tensors(), {}, {}
    for name in spec.act_tensors:
        rep = spec.encoding_of[name]
        if rep not in shared:
            shared[rep] = encodings[rep].constants(rep)
        by_dq[insert_activation_qdq(graph, tensors[name], encodings[rep], shared[rep]).name] = encodings[rep]
    nodes = {node_label(n): n for n in graph.nodes}
    for node_name, const_name in spec.const_inputs:
        quantize_constant(graph, nodes[node_name], const_name, target)
    return by_dq


def quantize_constant(graph: gs.Graph, node: gs.Node, const_name: str, target) -> None:
    """A float constant input of an elementwise op through Q/DQ (as EmitQDQ._quantize_constant_input)."""
    for i, t in enumerate(node.inputs):
        if t.name == const_name and isinstance(t, gs.Constant):
            values, bits = const_values(t).astype(np.float32), target.default_act_bits
            enc = activation_encoding(target, float(values.min()), float(values.max()), bits)
            q = numerics.quantize(values, enc.scale, enc.zero_point, bits, enc.dtype.startswith("int"))
            replace_with_dq(graph, node, i, q, enc, f"{node_label(node)}_{const_name}")


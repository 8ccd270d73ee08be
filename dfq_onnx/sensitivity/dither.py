"""Dithered activation grids in the weight probe: weight terms averaged over activation-rounding draws.

Under quantized activations a weight term D(g at w) carries one draw of the downstream activation
rounding: any weight change moves values across the fixed grid's steps, and which values cross depends on
where the grid lies. The half-sample split of `scoring.shrink` cannot see that noise (both halves share the
grid), and it is as large as the W5 -> W6 differences the allocator trades on (BENCHMARKS.md, issue 17
sessions 9-11). So, with `dither` on, every activation Q/DQ pair of the probe reads an offset input
d_k = delta s_k (s_k the class's scale; one scalar input `dither_<k>` per encoding class) and rounds each
value to the nearest point of the grid shifted by d_k with 0 added:

    u = Clip(DequantizeLinear(QuantizeLinear(x + d_k)) - d_k, lo_k, hi_k)    nearest of the shifted grid
    y = Where(|x| < |x - u| and d_k != 0, 0, u)                              or 0 when nearer

0 stays exact at every offset: padding, constant regions and a Relu's zeros are not moved (a plain shift
moves them to -d_k: a systematic bias on every zero-padded row, not a rounding draw -- session 12's half
step put rec's base loss at 0.498 against 0.355 on Emit's grid), and the rounding is a projection onto one
set, so a same-scale re-quantization (Reshape, Concat, MaxPool chains) leaves its values where they are.
lo_k, hi_k: the encoding's representable range, widened by a relative 1e-6; with d = 0 every value is
what the plain Q/DQ pair computes, bit for bit (the d != 0 gate keeps ties too). delta = 0 is Emit's grid.
The evaluator (`Evaluator(dither=K)`) runs sample rows r with r mod K = k at delta = k / K, so the even
and the odd rows (the shrinkage's two halves) see different grids: the term is the mean over the K draws
and |T_even - T_odd| holds the draw noise too. Same forward passes as without.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from dfq_onnx.core.graph_utils import const_values, reroute, take_output_name

PREFIX = "dither_"


def _range(scale: float, zp: int, dtype) -> tuple[np.float32, np.float32]:
    info = np.iinfo(dtype)
    lo, hi = np.float32(scale) * np.float32(info.min - zp), np.float32(scale) * np.float32(info.max - zp)
    pad = np.float32(1e-6) * max(abs(lo), abs(hi)) + np.float32(1e-30)
    return np.float32(lo - pad), np.float32(hi + pad)


def dither_activations(graph: gs.Graph) -> tuple[dict[str, float], dict[str, str]]:
    """Add the offset inputs to every activation QuantizeLinear (a non-constant input, per-tensor
    scale) and its DequantizeLinear readers (module docstring); returns (input name -> the class's
    scale, DequantizeLinear output -> the tensor its readers read now)."""
    inputs: dict[str, gs.Variable] = {}
    scales: dict[str, float] = {}
    renamed: dict[str, str] = {}
    for q in [n for n in graph.nodes if n.op == "QuantizeLinear"]:
        if len(q.inputs) < 3 or isinstance(q.inputs[0], gs.Constant):
            continue
        x, scale_t, zp_t = q.inputs[0], q.inputs[1], q.inputs[2]
        if not isinstance(scale_t, gs.Constant) or const_values(scale_t).size != 1:
            continue
        if scale_t.name not in inputs:
            name = f"{PREFIX}{len(inputs)}"
            inputs[scale_t.name] = gs.Variable(name, dtype=np.float32, shape=[])
            scales[name] = float(const_values(scale_t))
        d = inputs[scale_t.name]
        shifted = gs.Variable(f"{x.name}_dithered", dtype=np.float32, shape=x.shape)
        graph.nodes.append(gs.Node("Add", name=f"{x.name}_dither_Add", inputs=[x, d], outputs=[shifted]))
        q.inputs[0] = shifted
        zp = const_values(zp_t)
        lo, hi = _range(float(const_values(scale_t)), int(zp), zp.dtype)
        for dq in [c for c in q.outputs[0].outputs if c.op == "DequantizeLinear"]:
            name = dq.outputs[0].name
            renamed[name] = _undither(graph, dq, x, d, lo, hi)
    graph.inputs.extend(inputs.values())
    return scales, renamed


def _undither(graph: gs.Graph, dq: gs.Node, x: gs.Variable, d: gs.Variable, lo, hi) -> str:
    """dq's readers (and the graph output it is) read y (module docstring) instead; returns its name."""
    out = dq.outputs[0]
    readers = list(out.outputs)
    base = out.name

    def node(op: str, inputs: list, dtype=np.float32, shape=out.shape) -> gs.Variable:
        v = gs.Variable(f"{base}_dither_{op}{len(graph.nodes)}", dtype=dtype, shape=shape)
        graph.nodes.append(gs.Node(op, name=f"{v.name}_node", inputs=inputs, outputs=[v]))
        return v

    u = node("Sub", [out, d])
    clipped = node("Clip", [u, gs.Constant(f"{base}_dither_lo", np.asarray(lo, np.float32)),
                            gs.Constant(f"{base}_dither_hi", np.asarray(hi, np.float32))])
    nearer = node("Less", [node("Abs", [x]), node("Abs", [node("Sub", [x, clipped])])], np.bool_)
    on = node("Not", [node("Equal", [d, gs.Constant(f"{base}_dither_none", np.zeros((), np.float32))],
                           np.bool_, [])], np.bool_, [])     # d != 0: offset 0 is the plain pair at ties too
    zero = node("And", [nearer, on], np.bool_)
    y = node("Where", [zero, gs.Constant(f"{base}_dither_0", np.zeros((), np.float32)), clipped])
    reroute(out, y, readers)
    take_output_name(graph, out, y, "_dither_in")
    return y.name


def offsets(scales: dict[str, float], delta: float) -> dict[str, np.ndarray]:
    """The offset feeds at `delta` steps (0: Emit's grid)."""
    return {name: np.asarray(np.float32(delta) * np.float32(s), np.float32) for name, s in scales.items()}


"""Dithered activation grids in the weight probe: weight terms averaged over activation-rounding draws.

Under quantized activations a weight term D(g at w) carries one draw of the downstream activation
rounding: any weight change moves values across the fixed grid's steps, and which values cross depends on
where the grid lies. The half-sample split of `scoring.shrink` cannot see that noise (both halves share the
grid), and it is as large as the W5 -> W6 differences the allocator trades on (BENCHMARKS.md, issue 17
sessions 9-11). So, with `dither` on, every activation Q/DQ pair of the probe reads an offset input
d_k = delta s_k (s_k the class's scale; one scalar input `dither_<k>` per encoding class), applied outside
the encoding's zero bin only:

    y = Where(QuantizeLinear(x) == zp, 0, Clip(DequantizeLinear(QuantizeLinear(x + d_k)) - d_k, lo_k, hi_k))

A value Emit's grid rounds to 0 (|x| <= s/2: padding, constant regions, a Relu's zeros, small values)
stays exactly 0 at every offset; every other value is rounded on the grid shifted by delta steps. A
plain shift would move the zero bin's values to -d_k (asymmetric encodings) -- a systematic bias on every
zero-padded row, not a rounding draw (session 12: rec's dithered base loss 0.498 vs 0.355 on Emit's
grid). lo_k, hi_k: the encoding's representable range, widened by a relative 1e-6, so that d = 0 leaves
every value as the plain Q/DQ pair computes it, bit for bit; with d != 0 the clip keeps the range.
delta = 0 is Emit's grid. The evaluator (`Evaluator(dither=K)`) runs sample rows r with r mod K = k at
delta = k / K, so the even and the odd rows (the shrinkage's two halves) see different grids: the term is
the mean over the K draws and |T_even - T_odd| holds the draw noise too. Same forward passes as without.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from dfq_onnx.core.graph_utils import const_values, reroute

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
        dqs = [c for c in q.outputs[0].outputs if c.op == "DequantizeLinear"]
        zero = _zero_bin(graph, q, x) if dqs else None
        for dq in dqs:
            name = dq.outputs[0].name
            renamed[name] = _undither(graph, dq, d, lo, hi, zero)
    graph.inputs.extend(inputs.values())
    return scales, renamed


def _zero_bin(graph: gs.Graph, q: gs.Node, x: gs.Variable) -> gs.Variable:
    """The mask QuantizeLinear(x) == zp on the unshifted input: the values Emit's grid rounds to 0."""
    base = x.name
    q0 = gs.Variable(f"{base}_dither_q0", dtype=const_values(q.inputs[2]).dtype, shape=x.shape)
    mask = gs.Variable(f"{base}_dither_zero", dtype=np.bool_, shape=x.shape)
    graph.nodes.append(gs.Node("QuantizeLinear", name=f"{base}_dither_Q0", inputs=[x, *q.inputs[1:]],
                               outputs=[q0], attrs=dict(q.attrs)))
    graph.nodes.append(gs.Node("Equal", name=f"{base}_dither_Equal", inputs=[q0, q.inputs[2]], outputs=[mask]))
    return mask


def _undither(graph: gs.Graph, dq: gs.Node, d: gs.Variable, lo, hi, zero: gs.Variable) -> str:
    """dq's readers (and the graph output it is) read Where(zero, 0, Clip(dq - d, lo, hi)) instead;
    returns its name."""
    out = dq.outputs[0]
    readers = list(out.outputs)
    base = out.name
    back = gs.Variable(f"{base}_undithered", dtype=np.float32, shape=out.shape)
    clipped = gs.Variable(f"{base}_dither_clipped", dtype=np.float32, shape=out.shape)
    y = gs.Variable(f"{base}_dither_kept", dtype=np.float32, shape=out.shape)
    graph.nodes.append(gs.Node("Sub", name=f"{base}_dither_Sub", inputs=[out, d], outputs=[back]))
    graph.nodes.append(gs.Node("Clip", name=f"{base}_dither_Clip", outputs=[clipped], inputs=[
        back, gs.Constant(f"{base}_dither_lo", np.asarray(lo, np.float32)),
        gs.Constant(f"{base}_dither_hi", np.asarray(hi, np.float32))]))
    graph.nodes.append(gs.Node("Where", name=f"{base}_dither_Where", outputs=[y], inputs=[
        zero, gs.Constant(f"{base}_dither_0", np.zeros((), np.float32)), clipped]))
    reroute(out, y, readers)
    for i, o in enumerate(graph.outputs):
        if o is out:       # the graph output keeps its name
            out.name, y.name = f"{base}_dither_in", base
            graph.outputs[i] = y
    return y.name


def offsets(scales: dict[str, float], delta: float) -> dict[str, np.ndarray]:
    """The offset feeds at `delta` steps (0: Emit's grid)."""
    return {name: np.asarray(np.float32(delta) * np.float32(s), np.float32) for name, s in scales.items()}


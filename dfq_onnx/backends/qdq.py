"""Q/DQ node creation and naming: the one place that builds QuantizeLinear / DequantizeLinear.

Activation (shared encoding constants per encoding class):

    producer ── t ──► QuantizeLinear ── t_quantized ──► DequantizeLinear ── t_dequantized ──► consumers

Weight / bias (quantized offline, only the DequantizeLinear is in the graph):

    W_quantized (int8, per-channel) ──► DequantizeLinear(axis) ── W_dequantized ──► Conv
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from dfq_onnx.core import ir, numerics, weight_clip
from dfq_onnx.core.gptq import LaidHessian
from dfq_onnx.core.graph_utils import node_label, reroute, take_output_name


@dataclass(frozen=True)
class Encoding:
    scale: np.ndarray        # float32 scalar or 1-D
    zero_point: np.ndarray   # integer storage, same shape as scale
    dtype: str               # 'uint8', 'int8', 'int4', 'uint16', 'int32', ...
    bits: int
    axis: int | None = None

    def constants(self, base: str) -> tuple[gs.Constant, gs.Constant]:
        scale = gs.Constant(f"{base}_scale", np.asarray(self.scale, np.float32))
        zp = ir.constant(f"{base}_zero_point", np.asarray(self.zero_point), self.dtype)
        return scale, zp


def _attrs(axis: int | None) -> dict:
    return {} if axis is None else {"axis": int(axis)}


def absorb_activations(graph: gs.Graph, spec) -> None:
    """Remove each absorbed Relu/Clip (`spec.absorbed`): its producer writes the activation's output."""
    nodes, tensors = {node_label(n): n for n in graph.nodes}, graph.tensors()
    for act_name, src in spec.absorbed.items():
        act, producer = nodes[act_name], tensors[src].inputs[0]
        out = act.outputs[0]
        act.outputs.clear()
        act.inputs.clear()
        producer.outputs.clear()
        producer.outputs.append(out)


def insert_activation_qdq(graph: gs.Graph, t: gs.Variable, enc: Encoding,
                          consts: tuple[gs.Constant, gs.Constant], keep=frozenset()) -> gs.Variable:
    """Route every reader of `t` but those labelled in `keep` (and the graph output, if `t` is one)
    through a Q/DQ pair."""
    readers = [n for n in t.outputs if node_label(n) not in keep]
    q = gs.Variable(f"{t.name}_quantized", dtype=ir.NP_STORAGE[enc.dtype], shape=t.shape)
    dq = gs.Variable(f"{t.name}_dequantized", dtype=np.float32, shape=t.shape)
    graph.nodes.append(gs.Node("QuantizeLinear", name=f"{t.name}_QuantizeLinear",
                               inputs=[t, *consts], outputs=[q]))
    graph.nodes.append(gs.Node("DequantizeLinear", name=f"{t.name}_DequantizeLinear",
                               inputs=[q, *consts], outputs=[dq]))
    reroute(t, dq, readers)
    take_output_name(graph, t, dq, "_float")
    return dq


def replace_with_dq(graph: gs.Graph, node: gs.Node, index: int, q_values: np.ndarray, enc: Encoding,
                    base: str) -> None:
    """Feed input `index` of `node` from DequantizeLinear(q_values) instead of a float constant.

    A float constant no node reads any more has its array dropped at once: onnx-graphsurgeon tensors sit
    in reference cycles that only a later cyclic collection frees, and a large model would otherwise
    hold its float and its integer weights together until the end of the pass.
    """
    old = node.inputs[index]
    q = ir.constant(f"{base}_quantized", q_values, enc.dtype)
    scale, zp = enc.constants(base)
    out = gs.Variable(f"{base}_dequantized", dtype=np.float32, shape=list(q_values.shape))
    graph.nodes.append(gs.Node("DequantizeLinear", name=f"{base}_DequantizeLinear",
                               inputs=[q, scale, zp], outputs=[out], attrs=_attrs(enc.axis)))
    node.inputs[index] = out
    if isinstance(old, gs.Constant) and not old.outputs and not any(t is old for t in graph.outputs):
        old.values = np.empty((0,), np.float32)


INT32_MAX = float(np.iinfo(np.int32).max)
CLIP_BELOW = 8      # weights narrower than this get clipped scales (core/weight_clip.py); 8-bit: max-abs


def activation_encoding(target, lo: float, hi: float, bits: int) -> Encoding:
    dtype = target.act_dtype(bits)
    signed = dtype.startswith("int")
    if target.act_symmetric:
        scale, zp = numerics.symmetric_act_params(lo, hi, bits, signed)
    else:
        scale, zp = numerics.affine_params(lo, hi, bits, signed)
    return Encoding(np.float32(scale), np.asarray(zp), dtype, bits)


def quantize_weight(target, w: np.ndarray, bias: np.ndarray | None, x_scale: float | None, bits: int,
                    axis: int | None, importance=None):
    """Emit's weight (and int32 bias) quantization, shared with the sensitivity probe.

    Scales: max-abs at 8 bits and above and without `importance`; below 8 bits with an array (--weight-clip),
    each channel's clip ratio of least rounding error weighted by `importance` (broadcast against w:
    E[x_j^2] of the input each element multiplies, backends/input_moments.py; core/weight_clip.py).
    Below 8 bits with a LaidHessian (--gptq): GPTQ's rounding on the max-abs scales (and the clip
    search's on its diagonal when it asks for them), each row keeping the candidate of least output
    error e^T H e, round-to-nearest included (core/gptq.py). Returns (q, scale, q_bias, bias_scale);
    q_bias is None when the bias stays float (the target asks for float bias, there is no bias, or the
    input is not quantized). A weight scale is raised where
    |b / (s_x * s_w)| would overflow int32.
    """
    axis = axis if target.per_channel else None
    hess = importance if isinstance(importance, LaidHessian) and bits < CLIP_BELOW else None
    if hess is not None and axis not in (None, hess.axis):
        hess = None
    diag = hess.diagonal(w.shape) if hess is not None and hess.clip else importance
    scales = [numerics.weight_scales(w, bits, axis)]
    if bits < CLIP_BELOW and isinstance(diag, np.ndarray):
        clipped = weight_clip.clipped_scales(w, bits, axis, diag)
        scales = [clipped] if hess is None else [scales[0], clipped]
    int_bias = target.bias_mode == "int32" and bias is not None and x_scale is not None
    if int_bias:
        floor = np.abs(bias) / (float(x_scale) * INT32_MAX)
        scales = [np.maximum(s, floor.reshape(s.shape) if s.ndim else floor.max()).astype(np.float32)
                  for s in scales]
    signed = target.weight_dtype(bits).startswith("int")
    if hess is not None:
        lo, hi = numerics.qrange(bits, signed, narrow=target.narrow_range)
        q, scale, _ = hess.round(w, scales, None, lo, hi)
    else:
        scale = scales[0]
        q = numerics.quantize(w, scale, 0, bits, signed, axis, narrow=target.narrow_range)
    if not int_bias:
        return q, scale, None, None
    qb, bscale = numerics.bias_int32(bias, float(x_scale), scale)
    return q, scale, qb, bscale

"""Recurrent layers in a target's [forms]: which LSTMs a form can take, and the nodes it writes.

ONNX LSTM (X [T, N, I], W [D, 4H, I], R [D, 4H, H], B [D, 8H], sequence_lens, initial_h, initial_c,
P [D, 3H]; D = 2 when bidirectional) as ONNX Runtime's com.microsoft DynamicQuantizeLSTM, the form
`W8A8-dyn` (quantize_dynamic's form for it; the contrib operator docs): W and R in int8, transposed to
[D, I, 4H] / [D, H, 4H], on the target's weight grid (ort-cpu: symmetric, per output row of W and R --
one scale per direction and gate row, [D, 4H] -- narrow range, zero point 0); X quantized per call and
each step's h per step, by the kernel (uint8, one grid per tensor):

    X ─► DynamicQuantizeLSTM(W_q, R_q, B, sequence_lens, initial_h, initial_c, P,
                             W_scale [D, 4H], W_zero_point, R_scale, R_zero_point) ─► Y, Y_h, Y_c

B, the states, sequence_lens and the peepholes pass through as they are (float / int32). What the
kernel cannot take stays float with its reason (`unsupported`): the `layout = 1` (batch-major)
attribute, weights that are not constants, a node inside a subgraph. `weight_hat` gives the float W / R
the form computes with (the integer form's weights alone, for the decision's reference).
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from dfq_onnx.core import ir, numerics
from dfq_onnx.core.graph_utils import const_values, is_const, is_float

CONTRIB = "com.microsoft"
RECURRENT_OPS = ("LSTM",)
KERNEL_ATTRS = ("activation_alpha", "activation_beta", "activations", "clip", "direction", "hidden_size",
                "input_forget")


def recurrent_nodes(graph: gs.Graph, target) -> list[gs.Node]:
    """The graph's top-level nodes of a recurrent op the target's [forms] lists: the ones a compile scores."""
    return [n for n in graph.nodes if n.op in RECURRENT_OPS and target.forms_for(n.op)]


def unsupported(node: gs.Node) -> str | None:
    """Why the integer form cannot take this LSTM (None: it can)."""
    if node.attrs.get("layout", 0) != 0:
        return "layout = 1 (batch-major X / states): DynamicQuantizeLSTM takes the time-major layout only"
    if len(node.inputs) < 3 or not all(is_const(t) and is_float(t) for t in node.inputs[1:3]):
        return "W / R are not float constants"
    w, r = (const_values(t) for t in node.inputs[1:3])
    if w.ndim != 3 or r.ndim != 3 or w.shape[:2] != r.shape[:2]:
        return f"W {list(w.shape)} / R {list(r.shape)} are not [D, 4H, .] weights of one layer"
    if not isinstance(node.attrs.get("hidden_size"), int) or node.attrs["hidden_size"] * 4 != w.shape[1]:
        return "no hidden_size attribute matching W"
    return None


def quantize_rows(w: np.ndarray, bits: int, narrow: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(codes [D, 4H, K] int64, scales [D, 4H]): symmetric, one scale per direction and row (`narrow`:
    [-127, 127], the target's `narrow_range`)."""
    w = np.asarray(w, np.float32)
    flat = w.reshape(-1, w.shape[-1])
    scale = numerics.weight_scales(flat, bits, 0)
    q = numerics.quantize(flat, scale, 0, bits, True, 0, narrow=narrow)
    return q.reshape(w.shape), np.asarray(scale, np.float32).reshape(w.shape[:2])


def weight_hat(w: np.ndarray, bits: int, narrow: bool = True) -> np.ndarray:
    """The float weights the integer form computes with."""
    q, scale = quantize_rows(w, bits, narrow)
    return (q.astype(np.float32) * scale[..., None]).astype(np.float32)


def _codes(label: str, part: str, w: np.ndarray, bits: int, narrow: bool) -> tuple[gs.Constant, ...]:
    q, scale = quantize_rows(w, bits, narrow)
    return (ir.constant(f"{label}_{part}_quantized", np.ascontiguousarray(q.transpose(0, 2, 1)), "int8"),
            gs.Constant(f"{label}_{part}_scale", scale),
            ir.constant(f"{label}_{part}_zero_point", np.zeros(scale.shape, np.int64), "int8"))


def emit_lstm(graph: gs.Graph, node: gs.Node, bits: int, narrow: bool = True) -> dict:
    """Replace LSTM `node` by DynamicQuantizeLSTM with `bits`-bit W / R (module docstring); returns the
    report's fields."""
    if bits != 8:
        raise ValueError(f"node '{node.name}': DynamicQuantizeLSTM takes 8-bit weights, not {bits}")
    label = node.name or node.outputs[0].name
    w, r = (np.asarray(const_values(t), np.float32) for t in node.inputs[1:3])
    wq, ws, wz = _codes(label, "W", w, bits, narrow)
    rq, rs, rz = _codes(label, "R", r, bits, narrow)
    rest = [t if t.name else gs.Variable.empty() for t in node.inputs[3:8]]
    rest += [gs.Variable.empty()] * (5 - len(rest))
    attrs = {k: v for k, v in node.attrs.items() if k in KERNEL_ATTRS}
    graph.nodes.append(gs.Node("DynamicQuantizeLSTM", name=f"{label}_DynamicQuantizeLSTM", domain=CONTRIB,
                               attrs=attrs, inputs=[node.inputs[0], wq, rq, *rest, ws, wz, rs, rz],
                               outputs=list(node.outputs)))
    node.outputs.clear()
    scales = np.concatenate([ws.values.ravel(), rs.values.ravel()])
    return {"weight_dtype": "int8", "scale_min": float(scales.min()), "scale_max": float(scales.max()),
            "params": int(w.size + r.size), "shape": [list(w.shape), list(r.shape)]}

"""Drop a float Div by a positive scalar between two activation quantizers (EmitQDQ's last step).

A quantized tensor divided by a constant c > 0 is the same codes read with another scale:

    q1 ─DQ(s1, z)─► Div(c) ─Q(s2, z)─► q2 ─DQ(s2, z)─► ...      with s2 = s1 / c
    q1 ──────────────────────────────────DQ(s2, z)─► ...        (Div and its Q gone)

since Q(DQ(q1) / c; s1 / c, z) = q1 exactly. The ranges are measured (Div's output range is its
input's divided by c), so the rewrite applies when the two encodings agree as that says: same zero
point and storage type, s2 = s1 / c to float32 rounding. The runtime has no integer kernel for Div:
without this it runs DequantizeLinear -> Div -> QuantizeLinear on the whole tensor (Paddle's
hard-swish x * Clip(x + 3, 0, 6) / 6 where no layer reads it alone: core/reader_fold.py takes those).
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from dfq_onnx.core.graph_utils import const_values, is_const, is_graph_output, reroute, scalar_value

RTOL = 1e-5


def _scalar_divisor(node: gs.Node) -> float | None:
    if node.op != "Div" or len(node.inputs) != 2:
        return None
    value = scalar_value(node.inputs[1])
    return value if value is not None and value > 0 else None


def _encoding(node: gs.Node) -> tuple[float, np.ndarray] | None:
    """(scale, zero point) of a per-tensor Q / DQ node with constant parameters."""
    if len(node.inputs) < 3 or not all(is_const(t) for t in node.inputs[1:3]):
        return None
    scale, zero = const_values(node.inputs[1]), const_values(node.inputs[2])
    if scale.size != 1 or zero.size != 1:
        return None
    return float(scale.reshape(-1)[0]), zero.reshape(-1)


def fold_scalar_divisions(graph: gs.Graph) -> int:
    """The rewrite of the module docstring on every Div it applies to; returns how many went."""
    folded = 0
    for node in [n for n in graph.nodes if n.op == "Div"]:
        c = _scalar_divisor(node)
        x, y = node.inputs[0], node.outputs[0] if node.outputs else None
        dq1 = x.inputs[0] if len(x.inputs) == 1 else None
        if c is None or y is None or dq1 is None or dq1.op != "DequantizeLinear" or is_graph_output(graph, y):
            continue
        if len(y.outputs) != 1 or y.outputs[0].op != "QuantizeLinear":
            continue
        q2 = y.outputs[0]
        e1, e2 = _encoding(dq1), _encoding(q2)
        q1, out = dq1.inputs[0], q2.outputs[0]
        if e1 is None or e2 is None or q1.dtype != out.dtype or is_graph_output(graph, out):
            continue
        if not np.array_equal(e1[1], e2[1]) or abs(e2[0] * c - e1[0]) > RTOL * e1[0]:
            continue
        reroute(out, q1)
        node.inputs.clear()
        node.outputs.clear()
        q2.inputs.clear()
        q2.outputs.clear()
        folded += 1
    return folded

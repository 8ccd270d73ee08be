"""A token-wise linear layer spelled as flatten -> Gemm -> unflatten becomes one MatMul (+ bias Add).

Hugging Face's GPT-2 family (`Conv1D`: `addmm(b, x.view(-1, k), W).view(*x.shape[:-1], n)`) and other
exporters write a linear layer over a [batch, tokens, k] tensor as

    x ─ Reshape([-1, k]) ─ Gemm(W, b) ─ Reshape(Concat(Shape(x)[:-1], [n])) ─ y
    ==>   x ─ MatMul(alpha W) ─ Add(beta b) ─ y                                  (rank of x >= 3)

The rewrite is exact: flattening the leading axes keeps each token's k values together, in order, and
the second Reshape restores them. It lets every later pass see the spelling other exporters use for the
same layer (a MatMul over the token axis): the target's [forms] (dynamic int8 on ORT CPU) apply to it as
to any transformer MatMul, and a Gemm stays what it is elsewhere -- a layer over one vector per sample
(a classifier head) keeps its Gemm, as its output is not unflattened.

Legal when the Gemm has transA = 0, a constant weight and an optional constant bias broadcast along n
only; its flattened input is a Reshape to rank 2 whose last axis is x's static last axis; its output is
read only by one Reshape (no graph output) whose target is x's leading dimensions (copied from Shape(x),
or equal static sizes) followed by n.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from dfq_onnx.core.graph_utils import const_values, is_const, is_graph_output
from dfq_onnx.core.rewrites import same_dim, shape_entries


def _flattened(a: gs.Tensor) -> gs.Tensor | None:
    """x when `a` is Reshape(x) to [rows, k] keeping x's static last axis k (x of rank >= 3)."""
    flat = a.inputs[0] if len(a.inputs) == 1 else None
    if flat is None or flat.op != "Reshape" or len(a.outputs) != 1:
        return None
    x = flat.inputs[0]
    if x.shape is None or len(x.shape) < 3 or a.shape is None or len(a.shape) != 2:
        return None
    k = x.shape[-1]
    return x if isinstance(k, (int, np.integer)) and k > 0 and a.shape[1] == k else None


def _restores_leading(back: gs.Node, x: gs.Tensor, n: int) -> bool:
    """Whether `back`'s target is x's leading dimensions followed by n."""
    entries = shape_entries(back.inputs[1])
    if entries is None or len(entries) != len(x.shape):
        return False
    for p, e in enumerate(entries[:-1]):
        dim = e[0].shape[e[1]] if isinstance(e, tuple) else e
        if not ((isinstance(e, tuple) and e[0] is x and e[1] == p) or same_dim(dim, x.shape[p])):
            return False
    last = entries[-1]
    last = last[0].shape[last[1]] if isinstance(last, tuple) else last
    return isinstance(last, (int, np.integer)) and last == n


def _bias(gemm: gs.Node, n: int) -> np.ndarray | None | bool:
    """beta * C as an [n] vector, None without C, False when C is not a per-output-column shift."""
    c = gemm.inputs[2] if len(gemm.inputs) > 2 and gemm.inputs[2].name else None
    if c is None:
        return None
    if not is_const(c):
        return False
    v = np.asarray(const_values(c), np.float32)
    if v.size not in (1, n) or (v.ndim == 2 and v.shape[0] != 1) or v.ndim > 2:
        return False
    return (np.broadcast_to(v.reshape(-1), (n,)) * np.float32(gemm.attrs.get("beta", 1.0))).astype(np.float32)


def _rewrite(graph: gs.Graph, gemm: gs.Node) -> bool:
    if gemm.attrs.get("transA", 0) or len(gemm.inputs) < 2 or not is_const(gemm.inputs[1]):
        return False
    x = _flattened(gemm.inputs[0])
    w = np.asarray(const_values(gemm.inputs[1]), np.float32)
    if x is None or w.ndim != 2:
        return False
    if gemm.attrs.get("transB", 0):
        w = w.T
    k, n = w.shape
    readers = gemm.outputs[0].outputs
    if k != x.shape[-1] or len(readers) != 1 or readers[0].op != "Reshape" \
            or is_graph_output(graph, gemm.outputs[0]):
        return False
    back = readers[0]
    bias = _bias(gemm, n)
    if bias is False or not _restores_leading(back, x, n):
        return False
    y = back.outputs[0]
    w = np.ascontiguousarray(w * np.float32(gemm.attrs.get("alpha", 1.0)))
    product = y if bias is None else gs.Variable(f"{gemm.name}_product", np.float32, y.shape)
    graph.nodes.append(gs.Node("MatMul", name=gemm.name, inputs=[x, gs.Constant(f"{gemm.name}_weight", w)],
                               outputs=[product]))
    if bias is not None:
        graph.nodes.append(gs.Node("Add", name=f"{gemm.name}_bias", outputs=[y],
                                   inputs=[product, gs.Constant(f"{gemm.name}_bias_value", bias)]))
    back.outputs.clear()
    gemm.outputs.clear()
    gemm.name = f"{gemm.name}_replaced"
    return True


def unflatten_token_gemms(graph: gs.Graph) -> int:
    """Rewrite every token-wise Gemm (module docstring) as MatMul + Add; returns how many."""
    done = sum(_rewrite(graph, node) for node in [n for n in graph.nodes if n.op == "Gemm"])
    if done:
        graph.cleanup().toposort()
    return done

"""Latency of emit forms (backends/forms.py) measured on the model's own weight shapes and token count.

The speed of a form depends on the shape it runs at, not only on the form: MatMulNBits dequantizes its
blocks inside the kernel, which pays at M = 1 (decoding: memory-bound, 4-bit weights move a quarter of
the bytes) and not at M = batch x sequence (compute-bound: it runs near or above float speed), while the
dynamic int8 form (DynamicQuantizeLinear + MatMulInteger, fused by ORT) pays at large M. So a form layer
is timed alone, built with the form's real nodes on a random weight of the layer's shape:

    x [M, K] float ─► form(W [K, N]) ─► y [M, N]          MatMul, M = the rows it multiplies per run
    ids [M] int64  ─► form(T [V, D]) ─► y [M, D]          Gather (embedding lookup)

M is read from the model at the profiled input shape (the product of the layer input's leading dims).
Layers of one (op, weight shape, M) share their timings. Every (shape, candidate) model is timed once
per interleaved round (backends/latency.py `interleaved`); a form layer's cost is its median.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from dfq_onnx.backends import forms
from dfq_onnx.core import candidates, ir
from dfq_onnx.core.errors import UsageError

OPSET = 21          # int4 storage (dynamic 4-bit weights widened by Cast)
Shape = tuple       # (op, weight shape, rows M)


class _Layer:
    weight_index = 1


def form_model(op: str, w_shape, rows: int, cand, settings, seed: int = 0):
    """A model running `cand` on one random weight of `w_shape` for `rows` rows (module docstring)."""
    rng = np.random.default_rng(seed)
    w = gs.Constant("W", (rng.standard_normal(tuple(w_shape)) * 0.05).astype(np.float32))
    y = gs.Variable("y", dtype=np.float32, shape=[rows, int(w_shape[1])])
    if op == "Gather":
        x = gs.Variable("ids", dtype=np.int64, shape=[rows])
        node = gs.Node("Gather", name="layer", inputs=[w, x], outputs=[y], attrs={"axis": 0})
        layer = type("L", (), {"weight_index": 0})()
    else:
        x = gs.Variable("x", dtype=np.float32, shape=[rows, int(w_shape[0])])
        node = gs.Node("MatMul", name="layer", inputs=[x, w], outputs=[y])
        layer = _Layer()
    graph = gs.Graph(nodes=[node], inputs=[x], outputs=[y], opset=OPSET)
    forms.emit(graph, node, layer, cand, settings, {})
    graph.cleanup().toposort()
    return ir.to_model(graph, ir_version=ir.min_ir_version(OPSET))


def layer_rows(graph: gs.Graph, node: gs.Node, op: str) -> int:
    """Rows M a form layer multiplies per run in a graph with inferred, concrete shapes."""
    x = node.inputs[1] if op == "Gather" else node.inputs[0]
    dims = list(x.shape or [])
    lead = dims if op == "Gather" else dims[:-1]
    if not dims or any(not isinstance(d, int) or d <= 0 for d in lead):
        raise UsageError(f"node '{node.name}': input '{x.name}' has no concrete shape at the profiled "
                         f"input shape ({dims}); pass --input-shape NAME:D0,D1,..")
    return int(np.prod(lead)) if lead else 1


def shape_models(shapes: dict[str, Shape], cands: dict[str, tuple], settings) -> dict:
    """(shape, candidate) -> model, one per distinct layer shape and candidate its group may take."""
    out = {}
    for layer, shape in shapes.items():
        for c in cands[layer]:
            key = (shape, c)
            if key not in out:
                op, w_shape, rows = shape
                out[key] = form_model(op, w_shape, rows, c, settings)
    return out


def group_ms(groups: dict[str, list[str]], shapes: dict[str, Shape], cands: dict[str, tuple],
             measured: dict) -> dict[str, dict[str, float]]:
    """Group -> {candidate name: ms}: the sum over its layers of their shapes' timings."""
    return {g: {candidates.name(c): float(sum(measured[(shapes[x], c)] for x in layers))
                for c in cands[layers[0]]} for g, layers in groups.items()}

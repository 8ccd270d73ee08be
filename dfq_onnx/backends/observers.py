"""Observer models: the FP32 graph with the statistics of chosen tensors as its outputs.

Range observer (min/max calibration): every observed tensor t feeds two reductions inside the graph,
and a call returns two numbers per row and tensor instead of the tensor:

    t ──┬──► (the model's readers)
        ├──► ReduceMin ──► t/min        per row: min over all axes but the first
        └──► ReduceMax ──► t/max        per row: max

Node order. ORT runs a graph in a reverse depth-first order from its leaves (nodes nobody reads:
here the reductions), leaves taken from the highest node index down, each after everything it
depends on. So the leaf with the highest index runs with its whole ancestry first. Listed after its
tensor's producer, the deepest reduction comes last: the whole model runs before any other
reduction, and every observed tensor (after ORT's NCHWc transform, its reorder copy to NCHW) stays
alive to the end of the call. The reductions are therefore listed after the model, deepest first:
the shallowest has the highest index and runs after only its own prefix, the next one after the
nodes between them, and each observed tensor is freed once its reductions have run. One call over
one 640 x 640 row of PP-OCRv4 det (221 observed tensors) holds 0.06 GiB over the session instead of
0.50; EfficientNet-Lite0 at 9 rows 0.11 instead of 0.26, YOLOv8n at 3 rows of 320 x 320 0.03 instead
of 0.18 (BENCHMARKS.md, issue 14 session 7). The order decides only which tensors are alive at once;
every node computes the same values. Callers still size chunks as if the observed tensors were
outputs (`chunks.rows_per_chunk(held=...)`), a bound whatever the order. Min and max are exact, so
the range over all rows is the min/max over calls whatever the split. An infinity is always seen, a
NaN only where ORT's reductions return it (they may skip one); a non-finite range is refused.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from dfq_onnx.backends.runtime import copy_observing
from dfq_onnx.core import ir
from dfq_onnx.core.errors import UnsupportedModelError

STATS = ("ReduceMin", "ReduceMax")


def reduce_node(g: gs.Graph, op: str, t: gs.Tensor, y: gs.Variable, name: str, axes) -> gs.Node:
    """ReduceMin / ReduceMax of `t` over `axes` (None: all), keepdims 0, in `g`'s opset's form."""
    if axes is None:
        return gs.Node(op, name=name, inputs=[t], outputs=[y], attrs={"keepdims": 0})
    axes = np.asarray(axes, np.int64)
    if g.opset >= 18:                            # axes became an input of ReduceMin / ReduceMax at 18
        return gs.Node(op, name=name, inputs=[t, gs.Constant(f"{name}_axes", axes)], outputs=[y],
                       attrs={"keepdims": 0})
    return gs.Node(op, name=name, inputs=[t], outputs=[y], attrs={"keepdims": 0, "axes": axes.tolist()})


def _reduce(g: gs.Graph, op: str, t: gs.Tensor, y: gs.Variable, name: str) -> gs.Node:
    """`op` over every axis but the first (ORT parallelizes over the rows; a reduction over all axes
    runs on one thread), or over all axes when the rank is unknown or below 2."""
    rank = len(t.shape) if t.shape is not None else 0
    return reduce_node(g, op, t, y, name, np.arange(1, rank) if rank >= 2 else None)


def range_model(graph: gs.Graph, tensors: list[str]):
    """A copy of `graph` whose outputs are the per-row (min, max) of each named tensor, in order."""
    g, table = copy_observing(graph, tensors)
    reducers: dict[str, list[gs.Node]] = {}
    outs = []
    for i, name in enumerate(tensors):
        for op in STATS:
            y = gs.Variable(f"__observe_{i}_{op}", dtype=np.float32)
            reducers.setdefault(name, []).append(_reduce(g, op, table[name], y, f"__observe_{i}_{op}"))
            outs.append(y)
    # after the model, deepest tensor first (module docstring: the shallowest gets the highest index)
    order = [r for t in g.inputs for r in reducers.pop(t.name, [])]
    for node in g.nodes:
        order += [r for t in node.outputs for r in reducers.pop(t.name, [])]
    order += [r for rs in reducers.values() for r in rs]
    g.nodes = list(g.nodes) + order[::-1]
    g.outputs = outs
    return ir.session_model(g)


def ranges_of(outputs: list[np.ndarray], tensors: list[str], strict: bool = True
              ) -> dict[str, tuple[float, float]]:
    """(min, max) per tensor from one call of `range_model`; raises on a non-finite tensor (`strict`),
    else returns its non-finite bounds."""
    out = {}
    for i, name in enumerate(tensors):
        lo, hi = float(np.min(outputs[2 * i])), float(np.max(outputs[2 * i + 1]))
        if strict and not (np.isfinite(lo) and np.isfinite(hi)):
            raise UnsupportedModelError(f"tensor '{name}' is not finite on the calibration data")
        out[name] = (lo, hi)
    return out

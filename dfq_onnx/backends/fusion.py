"""What ONNX Runtime fused: the float ops its optimized graph still runs between Q/DQ pairs.

A QDQ model runs fast on ORT CPU when its graph optimizer turns every `DequantizeLinear -> op ->
QuantizeLinear` group into an integer kernel (QLinearConv, QLinearAdd, ...) or drops the pair around
a data-movement op. An op it could not fuse stays a float op between a DequantizeLinear and a
QuantizeLinear, and costs a dequantization, the float op and a quantization:

    QLinearConv ─► DequantizeLinear ─► Div ─► QuantizeLinear ─► QLinearConv      (Div: "between")

`float_ops_between_qdq` counts such ops by type in ORT's optimized graph (ORT_ENABLE_ALL, CPU EP):
nodes reachable from a DequantizeLinear output and reaching a QuantizeLinear input through nodes that
are neither; shape computations (Shape, Size and what only they feed) are not data and are skipped.
"""

from __future__ import annotations

import collections
import os
import tempfile

import onnx

from dfq_onnx.backends import runtime
from dfq_onnx.core import ir

QDQ = ("QuantizeLinear", "DequantizeLinear")
SHAPE_OPS = ("Shape", "Size")


def optimized_graph(model) -> onnx.GraphProto:
    """ORT's optimized graph (ORT_ENABLE_ALL, CPU EP) of a ModelProto, bytes or path."""
    if isinstance(model, (str, os.PathLike)):
        model = ir.load_model(model)
    with tempfile.TemporaryDirectory(prefix="dfq-opt-") as tmp:
        path = os.path.join(tmp, "optimized.onnx")
        runtime.session(model, threads=1, optimized_path=path)
        return onnx.load(path, load_external_data=False).graph


def _walk(start: list, edges: dict, stop) -> set[int]:
    seen: set[int] = set()
    todo = list(start)
    while todo:
        i = todo.pop()
        for j in edges.get(i, ()):
            if j not in seen and not stop(j):
                seen.add(j)
                todo.append(j)
    return seen


def float_ops_between_qdq(model) -> collections.Counter:
    """Op type -> number of float nodes ORT runs between a DequantizeLinear and a QuantizeLinear."""
    nodes = list(optimized_graph(model).node)
    producer = {o: i for i, n in enumerate(nodes) for o in n.output if o}
    down: dict[int, list[int]] = collections.defaultdict(list)
    up: dict[int, list[int]] = collections.defaultdict(list)
    for j, n in enumerate(nodes):
        for name in n.input:
            if name in producer:
                down[producer[name]].append(j)
                up[j].append(producer[name])
    def is_qdq(i): return nodes[i].op_type in QDQ   # noqa: E704
    dq = [i for i, n in enumerate(nodes) if n.op_type == "DequantizeLinear"]
    q = [i for i, n in enumerate(nodes) if n.op_type == "QuantizeLinear"]
    after_dq = _walk(dq, down, lambda i: is_qdq(i) or nodes[i].op_type in SHAPE_OPS)
    before_q = _walk(q, up, is_qdq)
    return collections.Counter(nodes[i].op_type for i in after_dq & before_q)

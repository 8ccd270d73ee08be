"""Write a float Add read only by a LayerNormalization as Sum (target `[placement] residual_sum`).

    x ──┐                                   x ──┐
    r ──┴─► Add ─► LayerNormalization  ==>  r ──┴─► Sum ─► LayerNormalization
            (or a decomposed one: ReduceMean, Sub of the mean, ...)

Sum of two inputs is the same elementwise float sum. Why ort-cpu asks for it: a transformer's residual
Add before its LayerNorm is what ONNX Runtime's SkipLayerNormFusion rewrites into one
com.microsoft SkipLayerNormalization when both inputs are [., S, D] with S and D static, and ONNX Runtime
1.32's CPU kernel for it runs 3-7x slower than the pair it replaces (one thread, [1, 64, 384]: 108 vs
16 us; two threads 57 vs 13 us; [8, 128, 384]: 1672 vs 206 us). The fusion matches the op type Add only.
An exporter's graph often hides the static S from ORT (the shape subgraphs Normalize folds), so its
FP32 model runs the pair while the compiled one got the slow kernel (a BERT token classifier: 1.37 of its
5.12 ms; BENCHMARKS.md, session 24).

Only an Add whose two inputs are activations (not a constant bias) and neither comes from a
DequantizeLinear (a quantized Add runs as QLinearAdd; its output goes through Q / DQ, not straight into
the LayerNorm) and whose output only the LayerNorm reads (a LayerNormalization, or a decomposed one's
ReduceMean and Sub, which ORT's LayerNormFusion turns into one before SkipLayerNormFusion runs); a graph
output is left as it is.
"""

from __future__ import annotations

import onnx_graphsurgeon as gs

from dfq_onnx.core.graph_utils import producer
from dfq_onnx.core.pass_base import Pass, PassResult
from dfq_onnx.core.state import CompileState


def _normalized(t: gs.Tensor) -> bool:
    """Whether `t` is read by a LayerNormalization alone, or by the head of a decomposed one (ReduceMean
    and the Sub of that mean: ORT's LayerNormFusion makes it one, then SkipLayerNormFusion takes the Add)."""
    readers = t.outputs
    if len(readers) == 1:
        return readers[0].op == "LayerNormalization"
    ops = {r.op: r for r in readers}
    if len(readers) != 2 or set(ops) != {"ReduceMean", "Sub"}:
        return False
    mean, sub = ops["ReduceMean"], ops["Sub"]
    return list(sub.inputs) == [t, mean.outputs[0]]


def _residual(graph: gs.Graph, node: gs.Node) -> bool:
    """Whether `node` is a float two-activation Add whose output only a LayerNorm reads."""
    if node.op != "Add" or len(node.inputs) != 2 or len(node.outputs) != 1:
        return False
    out = node.outputs[0]
    if out in graph.outputs or not _normalized(out):
        return False
    return all(isinstance(t, gs.Variable) and getattr(producer(t), "op", None) != "DequantizeLinear"
               for t in node.inputs)


class ResidualSum(Pass):
    """Rewrite the float residual Add before a LayerNormalization as Sum (module docstring)."""

    name = "ResidualSum"

    def run(self, state: CompileState) -> PassResult:
        nodes = [n for n in state.graph.nodes if _residual(state.graph, n)]
        for n in nodes:
            n.op = "Sum"
        if nodes:
            state.report.notes["residual_sum"] = len(nodes)
        return PassResult(bool(nodes), f"{len(nodes)} residual Adds before a LayerNorm written as Sum")

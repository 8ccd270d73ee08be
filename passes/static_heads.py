"""A CNN's classifier head written as MatMul (TF / Keras exports: GlobalAveragePool -> Squeeze ->
MatMul, where PyTorch writes Gemm; with a bias Add Normalize already makes it a Gemm,
core/affine_fold.py) is quantized statically like a Gemm, not in a [forms] form.

ORT CPU's [forms] encode MatMuls with a constant weight dynamically (DynamicQuantizeMatMul): right for
a transformer, whose MatMuls read the float residual stream. A classifier head reads the network's last
convolutions through a pooling: as a form it leaves that tail float -- DequantizeLinear, a layout
Transpose, the last residual Add + Relu and the pooling in float where ORT's own output runs
QLinearAdd / QLinearGlobalAveragePool / QLinearMatMul (Keras ResNet50 through tf2onnx: 1.05x ORT's
latency at batch 32; BENCHMARKS.md, session 8). A MatMul is such a head when its activation input has
rank 2 (one vector per sample) and every weighted op it reads through non-weighted ops is statically
quantized (a Conv / Gemm, not a form op). A transformer's pooler (rank 2 too) reads form MatMuls
through its LayerNorm and keeps its form.
"""

from __future__ import annotations

import onnx_graphsurgeon as gs

from dfq_onnx.core.graph_utils import is_const, walk


def _weighted_ancestors(t: gs.Tensor, target) -> list[gs.Node]:
    """The weighted ops (with a constant weight) `t` is computed from through non-weighted ops."""
    def weighted(node: gs.Node) -> bool:
        return target.role(node.op) == "weighted" and len(node.inputs) > 1 and is_const(node.inputs[1])
    return [node for node, _ in walk(t, lambda node, _: not weighted(node), up=True) if weighted(node)]


def is_static_head(node: gs.Node, target) -> bool:
    """`node` (a MatMul of an activation and a constant weight) is a CNN classifier head (docstring)."""
    x = node.inputs[0]
    if node.op != "MatMul" or x.shape is None or len(x.shape) != 2:
        return False
    ancestors = _weighted_ancestors(x, target)
    return bool(ancestors) and not any(target.forms_for(a.op) for a in ancestors)

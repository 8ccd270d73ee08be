"""What computes each model output: the graph side of the `auto` metric (`sensitivity.table.auto_metric`)
and of the synthesis objective for sequence outputs.

Each graph output is traced back through data-movement ops (Identity, Cast, Reshape, Transpose,
Squeeze, Unsqueeze, Flatten, Slice, Gather, Split, Dropout, a Concat of one computed tensor) to the
op that computes it, which gives the output's role:

    distribution   Softmax (probabilities on its axis, kept when only Identity/Cast follow it)
    logits         LogSoftmax; Gemm / MatMul, or a constant added to one (a linear layer's output);
                   a pointwise Conv1d [N, C, T] transposed to [N, T, C] (a convolutional CTC head:
                   per position, a linear layer whose outputs are the last axis)
    embedding      pooling or normalization: ReduceMean/Sum/Max/L1/L2, Global*Pool, LpNormalization,
                   or a Div/Mul one of whose inputs comes from such an op or a Sqrt (mean pooling
                   sum(x * mask) / sum(mask), L2 normalization x / ||x||)
    other          anything else (Sigmoid maps, LayerNorm token states, Conv heads, ...)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from dfq_onnx.core.graph_utils import is_const

MOVES = {"Identity", "Cast", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Slice", "Gather",
         "Split", "Dropout", "Concat", "Expand"}
SAME_LAYOUT = {"Identity", "Cast", "Dropout"}
LINEAR = {"Gemm", "MatMul"}
POOL = {"ReduceMean", "ReduceSum", "ReduceMax", "ReduceL1", "ReduceL2", "GlobalAveragePool",
        "GlobalMaxPool", "GlobalLpPool", "LpNormalization"}


@dataclass(frozen=True)
class Producer:
    op: str                   # the computing op ("" for an output that is a graph input or constant)
    role: str                 # "distribution" | "logits" | "embedding" | "other"
    axis: int | None = None   # the Softmax axis of a distribution (None: unknown, take the last)


def _data(t: gs.Tensor) -> bool:
    """A computed tensor that carries data (not a constant, not an integer shape/index computation)."""
    if is_const(t) or not t.name:
        return False
    try:
        return t.dtype is None or not np.issubdtype(np.dtype(t.dtype), np.integer)
    except TypeError:
        return True


def _computed(tensor: gs.Tensor) -> list[gs.Tensor]:
    return [t for t in tensor.inputs[0].inputs if _data(t)] if tensor.inputs else []


def _walk(tensor: gs.Tensor) -> tuple[gs.Node | None, bool]:
    """The computing node behind `tensor` and whether only same-layout ops lie between."""
    same = True
    for _ in range(64):
        node = tensor.inputs[0] if tensor.inputs else None
        if node is None or node.op not in MOVES:
            return node, same
        inputs = _computed(tensor)
        if len(inputs) != 1:
            return node, same
        same &= node.op in SAME_LAYOUT
        tensor = inputs[0]
    return None, False


def _pooled(tensor: gs.Tensor, depth: int = 3) -> bool:
    """`tensor` comes from pooling / a norm, through at most `depth` data-movement or clamp ops."""
    node = tensor.inputs[0] if tensor.inputs else None
    if node is None or depth < 0:
        return False
    if node.op in POOL or node.op == "Sqrt":
        return True
    if node.op in MOVES or node.op in ("Clip", "Max", "Add", "Pow"):
        return any(_pooled(t, depth - 1) for t in _computed(tensor))
    return False


def _pointwise_head(tensor: gs.Tensor, node: gs.Node) -> bool:
    """`tensor` [N, T, C] is Transpose(perm [0, 2, 1]) of a kernel-1 Conv's [N, C, T] output."""
    move = tensor.inputs[0] if tensor.inputs else None
    if node.op != "Conv" or move is None or move.op != "Transpose" or move.inputs[0] is not node.outputs[0]:
        return False
    weight = node.inputs[1] if len(node.inputs) > 1 else None
    kernel = node.attrs.get("kernel_shape") or (list(weight.shape[2:]) if weight is not None and weight.shape
                                               else None)
    return list(move.attrs.get("perm", [])) == [0, 2, 1] and bool(kernel) and all(k == 1 for k in kernel)


def producer_of(tensor: gs.Tensor) -> Producer:
    node, same = _walk(tensor)
    if node is None:
        return Producer("", "other")
    if node.op == "Softmax":
        rank = len(node.outputs[0].shape) if node.outputs[0].shape else None
        axis = node.attrs.get("axis", -1)
        axis = axis % rank if (rank and same) else None
        return Producer(node.op, "distribution", axis)
    if node.op == "LogSoftmax" or node.op in LINEAR or _pointwise_head(tensor, node):
        return Producer(node.op, "logits")
    if node.op == "Add" and any(is_const(t) for t in node.inputs):
        inner = [t for t in node.inputs if not is_const(t)]
        if len(inner) == 1 and inner[0].inputs and inner[0].inputs[0].op in LINEAR:
            return Producer("Add", "logits")
    if node.op in POOL or (node.op in ("Div", "Mul") and any(_pooled(t) for t in node.inputs)):
        return Producer(node.op, "embedding")
    return Producer(node.op, "other")


def output_producers(graph: gs.Graph) -> dict[str, Producer]:
    """Graph output name -> what computes it."""
    return {t.name: producer_of(t) for t in graph.outputs}

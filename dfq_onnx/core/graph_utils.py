"""Small helpers over onnx-graphsurgeon graphs (no protobuf)."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs


def producer(tensor: gs.Tensor) -> gs.Node | None:
    return tensor.inputs[0] if len(tensor.inputs) == 1 else None


def consumers(tensor: gs.Tensor) -> list[gs.Node]:
    return list(tensor.outputs)


def is_const(tensor: gs.Tensor | None) -> bool:
    return isinstance(tensor, gs.Constant)


def const_values(tensor: gs.Tensor) -> np.ndarray:
    return np.asarray(tensor.values)


def is_graph_output(graph: gs.Graph, tensor: gs.Tensor) -> bool:
    return any(t is tensor for t in graph.outputs)


def node_label(node: gs.Node) -> str:
    return node.name or (node.outputs[0].name if node.outputs else node.op)


def is_float(tensor: gs.Tensor) -> bool:
    dtype = tensor.dtype
    if dtype is None:
        return False
    try:
        return np.dtype(dtype) == np.float32
    except TypeError:
        return dtype == 1  # TensorProto.FLOAT


def unique_name(graph: gs.Graph, base: str, taken: set[str] | None = None) -> str:
    """A tensor/node name not used in the graph (`taken` caches names across calls)."""
    if taken is None:
        taken = set(graph.tensors().keys()) | {n.name for n in graph.nodes}
    name, i = base, 1
    while name in taken:
        name, i = f"{base}_{i}", i + 1
    taken.add(name)
    return name


def weight_output_axis(node: gs.Node) -> int | None:
    """Axis of the output channels in a weighted node's weight (None when not per-channel-able)."""
    if node.op == "Conv":
        return 0
    if node.op == "ConvTranspose":
        return 1 if node.attrs.get("group", 1) == 1 else None
    if node.op == "Gemm":
        return 0 if node.attrs.get("transB", 0) else 1
    if node.op == "MatMul":
        w = node.inputs[1]
        return w.shape and len(w.shape) - 1 if is_const(w) else None
    return None

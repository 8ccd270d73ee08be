"""Small helpers over onnx-graphsurgeon graphs (no protobuf)."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

# ops whose second input is a weight when it is a constant: the layers every stage quantizes, folds and scores
WEIGHTED_LAYERS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
# ops that move a tensor's values without changing any (the whole tensor, re-laid out)
LAYOUT_OPS = frozenset({"Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose"})


def producer(tensor: gs.Tensor) -> gs.Node | None:
    return tensor.inputs[0] if len(tensor.inputs) == 1 else None


def consumers(tensor: gs.Tensor) -> list[gs.Node]:
    return list(tensor.outputs)


def reads(node: gs.Node) -> list[gs.Tensor]:
    """The tensors `node` reads: its inputs and, for control flow, the outer tensors its subgraphs read
    by name (an If branch's implicit inputs), so a cut or a live range never separates them."""
    implicit = [t for sub in node.subgraphs() for t in sub._foreign_tensors().values()]
    return [*node.inputs, *implicit] if implicit else list(node.inputs)


def reroute(old: gs.Tensor, new: gs.Tensor, readers=None) -> None:
    """Every reader of `old` (or only `readers`, captured before new nodes read it) reads `new` instead."""
    for node in list(old.outputs) if readers is None else readers:
        for i, t in enumerate(node.inputs):
            if t is old:
                node.inputs[i] = new


def take_output_name(graph: gs.Graph, old: gs.Tensor, new: gs.Tensor, suffix: str) -> None:
    """Where `old` is a graph output, `new` takes its place and its name; `old` is renamed name + suffix."""
    for i, out in enumerate(graph.outputs):
        if out is old:
            name = old.name
            old.name, new.name = f"{name}{suffix}", name
            graph.outputs[i] = new


def walk(start: gs.Tensor, go_on, up: bool = False):
    """(node, tensor it was reached through) for the nodes reading `start` (up: producing it), each once,
    depth first; the walk goes on through a node's outputs (up: its non-constant inputs) when
    `go_on(node, tensor)` is true."""
    stack, seen = [start], set()
    while stack:
        cur = stack.pop()
        for node in (cur.inputs if up else cur.outputs):
            if id(node) in seen:
                continue
            seen.add(id(node))
            yield node, cur
            if go_on(node, cur):
                stack.extend([t for t in node.inputs if not is_const(t)] if up else node.outputs)


def is_pixel_dtype(dtype) -> bool:
    """An 8- or 16-bit integer type (numpy dtype or its name): what integer image pixels are stored in."""
    try:
        dtype = np.dtype(dtype)
    except TypeError:          # a name numpy does not know (bfloat16)
        return False
    return dtype.kind in "iu" and dtype.itemsize <= 2


def scalar_value(tensor: gs.Tensor | None) -> float | None:
    """The value of a one-element float32 constant when it is finite and non-zero, else None."""
    if not is_const(tensor):
        return None
    c = const_values(tensor)
    if c.size != 1 or c.dtype != np.float32:
        return None
    value = float(c.reshape(-1)[0])
    return value if np.isfinite(value) and value != 0.0 else None


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


def is_bool(tensor: gs.Tensor) -> bool:
    try:
        return tensor.dtype is not None and np.dtype(tensor.dtype) == np.bool_
    except TypeError:
        return False


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

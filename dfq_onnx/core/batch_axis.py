"""Inputs that carry the batch on axis 1: a recurrent state [layers, batch, hidden].

Samples are batched along axis 0 of every input (synthesis, calibration, scoring). ONNX's LSTM / GRU /
RNN read their initial state as [num_directions, batch, hidden], and exporters pass it through as a
model input with the batch on axis 1, often with unnamed dimensions (silero-vad v5's `state`
[2, ?, 128]), so nothing in the declaration says which axis is the batch. The evidence is the graph: an
input whose axis 0 is fixed and axis 1 free, that reaches an RNN op's initial-state slot.

For the compile, such an input is made batch-major: the graph input takes the shape with axes 0 and 1
swapped and a Transpose gives the nodes the original layout back, so every sample and feed is batched
along axis 0 as everywhere else:

    state' [N, 2, 128] -> Transpose(perm 1, 0, 2) -> state [2, N, 128] -> Gather -> ... -> LSTM

`restore_layout` removes the Transpose before the model is written: the written model reads the input
as the source declared it.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from dfq_onnx.core import ir, rewrites

RNN_STATE_SLOTS = {"LSTM": (5, 6), "GRU": (5,), "RNN": (5,)}
# what a state passes through on its way to the RNN: selecting a layer, adding or dropping unit axes, joining
# h and c; anything that computes (a MatMul of an encoder output into h0) ends the path
PASS_THROUGH = {"Gather", "Unsqueeze", "Squeeze", "Slice", "Split", "Identity", "Cast", "Concat"}
SUFFIX = "__batch_axis1"


def _live(graph: gs.Graph, nodes: dict[int, gs.Node], branch_out: dict[int, gs.Tensor]) -> None:
    """Every node of `graph` and its subgraphs by id; each branch output mapped to its If's output."""
    for node in graph.nodes:
        nodes[id(node)] = node
        for sub in node.subgraphs():
            for k, t in enumerate(sub.outputs):
                if k < len(node.outputs):
                    branch_out[id(t)] = node.outputs[k]
            _live(sub, nodes, branch_out)


def reaches_rnn_state(graph: gs.Graph, tensor: gs.Tensor) -> bool:
    """Whether `tensor` flows (through PASS_THROUGH nodes, into and out of If branches) into the
    initial-state input of an LSTM / GRU / RNN."""
    nodes, branch_out = {}, {}
    _live(graph, nodes, branch_out)
    seen, todo = {id(tensor)}, [tensor]
    while todo:
        t = todo.pop()
        nxt = [branch_out[id(t)]] if id(t) in branch_out else []
        for node in t.outputs:
            if id(node) not in nodes:
                continue            # a node of a branch folding discarded
            slots = RNN_STATE_SLOTS.get(node.op, ())
            if any(k < len(node.inputs) and node.inputs[k] is t for k in slots):
                return True
            if node.op in PASS_THROUGH:
                nxt += node.outputs
        for u in nxt:
            if id(u) not in seen:
                seen.add(id(u))
                todo.append(u)
    return False


def state_inputs(graph: gs.Graph) -> list[str]:
    """Float inputs of rank >= 2 with a fixed axis 0 and a free axis 1 that reach an RNN's initial
    state: their batch is axis 1."""
    found = []
    for t in graph.inputs:
        shape = t.shape or []
        floating = t.dtype is not None and np.dtype(t.dtype).kind == "f"
        if (floating and len(shape) >= 2 and isinstance(shape[0], int) and shape[0] > 0
                and not (isinstance(shape[1], int) and shape[1] > 0) and reaches_rnn_state(graph, t)):
            found.append(t.name)
    return found


def make_batch_major(graph: gs.Graph, batch_dims: dict[str, object]) -> None:
    """Swap axes 0 and 1 of the inputs named in `batch_dims` at the graph's boundary (a Transpose after
    each); the batch axis takes the dimension the source declared (a hint or an npz may have sized it)."""
    for i, t in enumerate(list(graph.inputs)):
        if t.name not in batch_dims:
            continue
        perm = [1, 0, *range(2, len(t.shape))]
        shape = [batch_dims[t.name], *[t.shape[p] for p in perm[1:]]]
        outer = gs.Variable(t.name, dtype=t.dtype, shape=shape)
        t.name += SUFFIX
        graph.nodes.append(gs.Node("Transpose", f"{outer.name}{SUFFIX}", {"perm": perm}, [outer], [t]))
        graph.inputs[i] = outer
    graph.toposort()


def restore_layout(graph: gs.Graph, names: list[str]) -> int:
    """Undo `make_batch_major`: the inputs read as declared again, their Transposes removed."""
    restored = 0
    for i, t in enumerate(list(graph.inputs)):
        node = next((n for n in t.outputs if n.op == "Transpose" and n.name == f"{t.name}{SUFFIX}"), None)
        if t.name not in names or node is None:
            continue
        inner = node.outputs[0]
        node.inputs.clear()
        node.outputs.clear()
        graph.nodes.remove(node)
        inner.name = t.name
        graph.inputs[i] = inner
        restored += 1
    return restored


def output_axes(graph: gs.Graph, rows: tuple[int, int] = (5, 7)) -> dict[str, tuple[int, int]]:
    """(batch axis, rank) of each graph output that does not carry the batch on axis 0 (a state output
    [layers, batch, hidden] beside a state input), read from the shapes inferred on copies whose inputs
    take `rows` rows: the one axis whose size follows them. Shape-conditioned control flow folds away at
    static sizes, so the inference sees through it."""
    sizes = []
    for n in rows:
        probe = ir.copy_graph(graph)
        for t in probe.inputs:
            t.shape = [n, *t.shape[1:]] if t.shape else t.shape
        probe = rewrites.settle_shapes(probe)
        ir.refresh_shapes(probe)
        sizes.append({t.name: t.shape for t in probe.outputs})
    axes = {}
    for t in graph.outputs:
        a, b = sizes[0].get(t.name), sizes[1].get(t.name)
        moved = [k for k, (x, y) in enumerate(zip(a or [], b or [])) if (x, y) == rows]
        if a and b and len(a) == len(b) and len(moved) == 1 and moved[0] > 0:
            axes[t.name] = (moved[0], len(a))
    return axes


def swap_rows(feeds: dict, names: list[str]) -> dict:
    """Arrays in the declared layout (batch on axis 1) as the compile feeds them (batch on axis 0), and
    back: the same swap."""
    return {k: (np.ascontiguousarray(v.swapaxes(0, 1)) if k in names else v) for k, v in feeds.items()}

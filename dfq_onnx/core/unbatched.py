"""Models without a batch axis: the graph adds the batch of one itself.

Samples are batched along axis 0 of every input (synthesis, calibration, scoring). Some exporters write
a network for one example: madmom's converted models take a spectrogram [frames, bins] and make the
Conv input themselves,

    input [T, F] -> Unsqueeze(axes 2) -> Unsqueeze(axes 0) -> [1, T, F, 1] -> Transpose -> Conv [1, 1, T, F]

(an LSTM's input likewise: Unsqueeze(axes 1) -> [T, 1, F], the sequence on axis 0). Axis 0 of such an
input is not a batch: sized 1 (what `--input-shape NAME:1,...` asked for before) the model sees one
frame. The evidence is the graph: the input's axis 0 is followed through layout ops (Unsqueeze,
Squeeze, Transpose, Pad) and elementwise ops to the first layer it reaches, and arrives elsewhere than
that layer's batch axis (0 for a Conv, 1 for an LSTM / GRU / RNN with layout 0), which the graph holds
at a static 1. A MatMul / Gemm reads rows, not a batch: it gives no verdict.

For the compile such a model gets a batch axis of one: each input takes [1, *shape] and a Squeeze
gives the nodes the declared tensor, each output an Unsqueeze in front, so every sample is one call
(`backends.chunks.static_batch` is 1) and every output is read batch-first:

    input' [1, T, F] -> Squeeze(axes 0) -> input [T, F] -> ... -> out [T] -> Unsqueeze(axes 0) -> out' [1, T]

`restore` removes both before the model is written: it reads and writes what the source declared.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from dfq_onnx.core.errors import UsageError
from dfq_onnx.core.graph_utils import reroute

SUFFIX = "/unbatched"
LAYOUT = {"Unsqueeze", "Squeeze", "Transpose", "Pad", "Identity", "Cast"}
ELEMENTWISE = {"Mul", "Add", "Sub", "Div", "Relu", "Neg", "Abs", "Log", "Exp", "Sqrt", "Clip",
               "Tanh", "Sigmoid", "Elu", "LeakyRelu", "Pow"}
RNN = {"LSTM", "GRU", "RNN"}
ROW_LAYERS = {"MatMul", "Gemm"}


def _raw_axes(node: gs.Node) -> list[int] | None:
    """An Unsqueeze / Squeeze node's axes as written (attribute before opset 13, else a constant input)."""
    axes = node.attrs.get("axes")
    if axes is None and len(node.inputs) > 1 and isinstance(node.inputs[1], gs.Constant):
        axes = node.inputs[1].values.tolist()
    return None if axes is None else [int(a) for a in np.atleast_1d(axes)]


def _axes(node: gs.Node, rank: int) -> list[int] | None:
    """`_raw_axes`, non-negative (`rank`: the output's rank for Unsqueeze, the input's for Squeeze)."""
    axes = _raw_axes(node)
    return None if axes is None else sorted(a % rank for a in axes)


def _operand_rank(node: gs.Node, t: gs.Tensor, rank: int) -> int | None:
    """The output rank of an elementwise `node` reading `t` (of `rank`): the widest operand's."""
    ranks = [rank]
    for x in node.inputs:
        if x is not t:
            if x.shape is None:
                return None
            ranks.append(len(x.shape))
    return max(ranks)


def _moved(node: gs.Node, t: gs.Tensor, at: tuple) -> tuple | None:
    """Where (axis, rank, unit axes) `at` of `t` lands in `node`'s first output; None when untold."""
    pos, rank, ones = at
    if node.op in ("Pad", "Identity", "Cast"):
        return at
    if node.op == "Transpose":
        perm = list(node.attrs.get("perm", range(rank - 1, -1, -1)))
        return perm.index(pos), rank, frozenset(perm.index(k) for k in ones)
    if node.op == "Unsqueeze":
        n = len(_raw_axes(node) or [])
        axes = _axes(node, rank + n) if n else None
        if not axes:
            return None
        kept = [k for k in range(rank + n) if k not in axes]
        return kept[pos], rank + n, frozenset([kept[k] for k in ones] + axes)
    if node.op == "Squeeze":
        axes = _axes(node, rank)
        if axes is None or pos in axes:
            return None
        shift = lambda k: k - sum(a < k for a in axes)   # noqa: E731
        return shift(pos), rank - len(axes), frozenset(shift(k) for k in ones if k not in axes)
    if node.op in ELEMENTWISE:
        out = _operand_rank(node, t, rank)
        if out is None:
            return None
        return pos + out - rank, out, frozenset(k + out - rank for k in ones)
    return None


def _verdict(node: gs.Node, t: gs.Tensor, at: tuple) -> bool | None:
    """True: `node` reads `t`'s axis as its batch; False: elsewhere, the batch a unit axis the graph
    added (or a static 1)."""
    if node.op in ("Conv", "ConvTranspose") and node.inputs[0] is t:
        batch = 0
    elif node.op in RNN and node.inputs[0] is t:
        batch = 0 if node.attrs.get("layout", 0) == 1 else 1
    else:
        return None
    pos, _, ones = at
    if pos == batch:
        return True
    unit = batch in ones or t.shape is not None and len(t.shape) > batch and t.shape[batch] == 1
    return False if unit else None


def reads_batch(t: gs.Tensor) -> bool | None:
    """Whether the layers first reached from input `t` read its axis 0 as their batch (module
    docstring); None when no layer is reached through the ops followed, or a MatMul / Gemm is."""
    if t.shape is None:
        return None
    verdicts, seen, todo = set(), set(), [(t, (0, len(t.shape), frozenset()))]
    while todo:
        u, at = todo.pop()
        for node in u.outputs:
            if node.op in ROW_LAYERS:
                return None
            v = _verdict(node, u, at)
            if v is not None:
                verdicts.add(v)
                continue
            if node.op not in LAYOUT | ELEMENTWISE or not node.outputs or id(node) in seen:
                continue
            seen.add(id(node))
            nxt = _moved(node, u, at)
            if nxt is not None:
                todo.append((node.outputs[0], nxt))
    return verdicts.pop() if len(verdicts) == 1 else None


def unbatched_inputs(graph: gs.Graph) -> list[str]:
    """The inputs of a model with no batch axis: some input's axis 0 reaches its layers elsewhere than
    their batch axis, and none reaches it as the batch; every input is then listed."""
    verdicts = [reads_batch(t) for t in graph.inputs]
    if False in verdicts and True not in verdicts:
        return [t.name for t in graph.inputs]
    return []


def add_batch_axis(graph: gs.Graph) -> None:
    """Every input read through a Squeeze from [1, *shape], every output written through an
    Unsqueeze to [1, *shape] (module docstring)."""
    for i, t in enumerate(list(graph.inputs)):
        outer = gs.Variable(t.name, dtype=t.dtype, shape=[1, *t.shape] if t.shape is not None else None)
        t.name += SUFFIX
        axes = gs.Constant(f"{outer.name}{SUFFIX}/axes", np.array([0], np.int64))
        graph.nodes.append(gs.Node("Squeeze", f"{outer.name}{SUFFIX}", inputs=[outer, axes], outputs=[t]))
        graph.inputs[i] = outer
    for i, t in enumerate(list(graph.outputs)):
        y = gs.Variable(f"{t.name}{SUFFIX}", dtype=t.dtype,
                        shape=[1, *t.shape] if t.shape is not None else None)
        axes = gs.Constant(f"{t.name}{SUFFIX}/axes", np.array([0], np.int64))
        graph.nodes.append(gs.Node("Unsqueeze", f"{t.name}{SUFFIX}", inputs=[t, axes], outputs=[y]))
        graph.outputs[i] = y
    graph.toposort()


def restore(graph: gs.Graph) -> int:
    """Undo `add_batch_axis`: the inputs and outputs are the declared tensors again; how many changed."""
    tensors = graph.tensors()
    changed = 0
    for i, t in enumerate(list(graph.outputs)):
        node = t.inputs[0] if t.inputs else None
        if node is not None and node.op == "Unsqueeze" and t.name.endswith(SUFFIX):
            graph.outputs[i] = tensors[t.name[:-len(SUFFIX)]]
            node.inputs.clear()
            node.outputs.clear()
            changed += 1
    for t in graph.inputs:
        node = next((n for n in graph.nodes if n.op == "Squeeze" and n.name == f"{t.name}{SUFFIX}"), None)
        if node is None:
            continue
        src, inner = node.inputs[0], node.outputs[0]
        reroute(inner, src)
        node.inputs.clear()
        node.outputs.clear()
        t.shape = list(t.shape[1:]) if t.shape is not None else None
        if src is not t:            # Q/DQ between the input and the Squeeze: their shapes are the input's
            src.shape = None
        changed += 1
    graph.cleanup().toposort()
    return changed


def sized_hints(graph: gs.Graph, names: list[str], hints: dict[str, tuple]) -> dict[str, tuple]:
    """`hints` (--input-shape, in the declared layout) for `add_batch_axis`'s inputs: a leading 1, every
    dimension sized (axis 0 of an input without a batch axis is a size too: a usage error names them)."""
    out = dict(hints)
    for t in graph.inputs:
        if t.name not in names or t.shape is None:
            continue
        given = hints.get(t.name)
        if given is not None and len(given) != len(t.shape):
            raise UsageError(f"--input-shape {t.name}: rank {len(given)} given, the input has rank "
                             f"{len(t.shape)} ({list(t.shape)})")
        dims = [d if isinstance(d, (int, np.integer)) and d > 0 else (given[i] if given else None)
                for i, d in enumerate(t.shape)]
        if any(d is None for d in dims):
            example = ",".join(str(d) if isinstance(d, (int, np.integer)) and d > 0 else f"<{d or f'dim{i}'}>"
                               for i, d in enumerate(t.shape))
            raise UsageError(f"input '{t.name}' {list(t.shape)} has no batch axis (the graph adds a batch of "
                             f"one before its first layer), so every dimension is a size of one example; "
                             f"pass --input-shape {t.name}:{example} with the real sizes")
        out[t.name] = (1, *(int(d) for d in (given or dims)))
    return out

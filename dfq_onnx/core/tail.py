"""The data-dependent tail of a model: post-processing whose output sizes depend on the values computed.

Detectors exported with their post-processing end in NonMaxSuppression (Ultralytics `nms=True`,
TF Object Detection's SSDs through tf2onnx, PaddleDetection's multiclass NMS), followed by Gathers of the
kept boxes; other models end in NonZero / Compress / Unique. Such outputs change size with any
perturbation -- a quantized configuration keeps 11 boxes where FP32 kept 12 -- so no output metric can
compare them, and nothing in the tail has weights to quantize. The compile therefore runs on the head:

    image ─► backbone ─► head ─► boxes [N, A, 4], scores [N, C, A] ─┐            (the compile sees this)
                                          ┌─────────────────────────┘
                                          └─► NonMaxSuppression ─► Gather ─► det_boxes [K, 4]  (tail)

`split` takes every node downstream of a data-dependent op (or of an If / Loop / Scan whose body holds
one) out of the graph; the tensors the tail reads
from the head (here boxes and scores) become the head's graph outputs, scored by the output metric
like any output, and graph inputs only the tail reads are set aside. `attach` puts the tail back, by
tensor name, after Emit: it computes in float on the head's outputs exactly as in the source model.
A tail that holds a quantizable layer (a data-dependent op early in the model) is not split.

Ops whose outputs are not tensors are set aside the same way (`NON_TENSOR`): sklearn-onnx ends every
classifier in a ZipMap, one {class: probability} map per row, which no output metric reads and no ONNX
Runtime session of the compile can declare (the graph's copies type every output as a tensor):

    X ─► Scaler ─► MatMul ... Softmax ─► probabilities [N, K] ─► ZipMap ─► output_probability (tail)

Outputs picked from scores are set aside too (`DECODES`): a recognizer that ends in its greedy decoding
writes integer ids and a confidence that no output metric reads as the scores they come from, and an
NMS-free detector (YOLOv10 / YOLO26 end-to-end exports) writes its top-k anchors sorted by score, so a
small change of scores reorders the rows any metric compares. The tensor an ArgMax or a TopK reads
becomes the head's output when nothing after it is a weighted layer:

    ... ─► logits [N, T, C] ─┬─► ArgMax ─► ids [N, T]                                 (tail)
                             └─► ReduceMax, Exp, ReduceSum ... ─► conf [N, T]         (tail)

    ... ─► boxes [N, A, 4], scores [N, A, K] ─► ReduceMax ─► best [N, A]
                            best ─► TopK ─► GatherElements(boxes) ... ─► dets [N, k, 6]   (tail)

Outputs that carry the batch on another axis than 0 (a time-major CTC recognizer's logits [T, N, C], as
PyTorch's nn.LSTM writes them) are read batch-first by everything that scores outputs (the synthesis
objectives, the activation decision, sensitivity): `batch_first` appends a Transpose moving the batch
axis -- the output dimension named like the first input's dimension 0 -- to the front for the compile,

    ... ─► logits [T, N, C] ─► Transpose(perm [1, 0, 2]) ─► logits/batch_first [N, T, C]  (compile output)

and `restore_batch_axes` removes it after Emit: the source's output is the tensor it read, by name.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from dfq_onnx.core.graph_utils import WEIGHTED_LAYERS, is_const, reads, walk

DATA_DEPENDENT = ("NonMaxSuppression", "NonZero", "Compress", "Unique")
DECODES = ("ArgMax", "ArgMin", "TopK")  # picks from scores: the scores are compiled and measured
NON_TENSOR = ("ZipMap", "SequenceConstruct", "SequenceEmpty", "SequenceInsert", "SequenceErase",
              "SplitToSequence", "Optional")     # write a sequence, map or optional value


@dataclass
class Tail:
    nodes: list[gs.Node]             # in the source's (topological) order, inputs detached
    node_inputs: list[list[gs.Tensor]]   # each node's inputs as in the source
    outputs: list[str]               # the source's graph outputs, in order
    inputs: list[gs.Tensor]          # the source's graph inputs, in order
    cut: list[str]                   # head tensors the tail reads (the head's extra outputs)


@dataclass
class BatchFirst:
    node: gs.Node                    # the Transpose added for the compile
    output: str                      # the source's graph output it reads


def batch_axis_of(first_input_shape, shape) -> int | None:
    """The one axis of `shape` whose symbolic dimension is the first input's dimension 0, else None. A
    model pinned to a batch of 1 (ddddocr's OCR: its Reshape fixes it) has no name to follow: there an
    output whose axis 0 is not 1 and which has one axis of extent 1 carries the batch on that axis
    ([T, 1, C] of a time-major recognizer)."""
    first = first_input_shape
    if not first or shape is None:
        return None
    if isinstance(first[0], (int, np.integer)) and first[0] == 1 and shape and _known(shape[0]) \
            and shape[0] != 1:
        axes = [i for i, d in enumerate(shape) if _known(d) and d == 1]
        return axes[0] if len(axes) == 1 and all(_known(d) for d in shape) else None
    if not isinstance(first[0], str):
        return None
    axes = [i for i, d in enumerate(shape) if d == first[0]]
    return axes[0] if len(axes) == 1 else None


def _known(d) -> bool:
    return isinstance(d, (int, np.integer)) and d >= 0


def batch_axis(graph: gs.Graph, t: gs.Tensor) -> int | None:
    """`batch_axis_of` for a tensor of `graph`."""
    return batch_axis_of(graph.inputs[0].shape if graph.inputs else None, t.shape)


def batch_first(graph: gs.Graph, known: dict[str, tuple[int, int]] | None = None) -> list[BatchFirst]:
    """Outputs with the batch on axis b > 0 read through a Transpose moving it first (module docstring);
    `known`: output name -> (batch axis, rank) found otherwise (a state output, core/batch_axis.py)."""
    moved = []
    for i, t in enumerate(graph.outputs):
        b, rank = (known or {}).get(t.name) or (batch_axis(graph, t), len(t.shape or []))
        if not b:
            continue
        perm = [b] + [k for k in range(rank) if k != b]
        shape = [t.shape[k] for k in perm] if t.shape and len(t.shape) == rank else None
        y = gs.Variable(f"{t.name}/batch_first", dtype=t.dtype, shape=shape)
        node = gs.Node("Transpose", name=f"{t.name}/batch_first", attrs={"perm": perm}, inputs=[t],
                       outputs=[y])
        graph.nodes.append(node)
        graph.outputs[i] = y
        moved.append(BatchFirst(node, t.name))
    return moved


def restore_batch_axes(graph: gs.Graph, moved: list[BatchFirst]) -> None:
    """Remove `batch_first`'s Transposes: each output is again the source's tensor of that name."""
    if not moved:
        return
    tensors = graph.tensors()
    ids = {id(m.node) for m in moved}
    for m in moved:
        i, chain = _output_after(graph, m.node.outputs[0])
        source = tensors[m.output]
        if chain:           # the output quantized after the Transpose: its per-tensor Q/DQ moves before it
            out = graph.outputs[i]
            chain[-1].inputs[0] = source
            for node in chain:
                node.outputs[0].shape = source.shape
                node.name = node.name.replace("/batch_first", "")
                plain = node.outputs[0].name.replace("/batch_first", "")
                if plain not in tensors:
                    node.outputs[0].name = plain
            source.name = f"{m.output}_float"
            out.name = m.output
        else:
            graph.outputs[i] = source
        m.node.inputs.clear()
    graph.nodes = [n for n in graph.nodes if id(n) not in ids]
    graph.cleanup()


def _output_after(graph: gs.Graph, t: gs.Tensor) -> tuple[int, list[gs.Node]]:
    """(index of the graph output that is `t` or reads it through per-tensor Q / DQ nodes only, those nodes
    from the output back)."""
    for k, out in enumerate(graph.outputs):
        cur, chain = out, []
        while cur is not t and len(cur.inputs) == 1 and cur.inputs[0].op in ("QuantizeLinear",
                                                                            "DequantizeLinear"):
            node = cur.inputs[0]
            scale = node.inputs[1]
            if not is_const(scale) or np.asarray(scale.values).size != 1:
                break
            chain.append(node)
            cur = node.inputs[0]
        if cur is t:
            return k, chain
    raise ValueError(f"no graph output reads '{t.name}'")


def _data_dependent(node: gs.Node) -> bool:
    """A value-dependent-size op or one writing a non-tensor value, or control flow (tf2onnx's batched
    NMS is a Loop) holding one."""
    if node.op in DATA_DEPENDENT or node.op in NON_TENSOR:
        return True
    return any(_data_dependent(n) for g in node.subgraphs() for n in g.nodes)


def _weighted(node: gs.Node) -> bool:
    return node.op in WEIGHTED_LAYERS and any(is_const(t) for t in node.inputs[1:2])


def _decoding(graph: gs.Graph) -> list[gs.Node]:
    """The readers of each tensor an ArgMax / ArgMin / TopK reads, where nothing downstream of it is a
    weighted layer (module docstring)."""
    found = []
    for n in graph.nodes:
        if n.op in DECODES and n.inputs and not is_const(n.inputs[0]):
            scores = n.inputs[0]
            if not any(_weighted(m) for m, _ in walk(scores, lambda *_: True)):
                found += [m for m in scores.outputs if m not in found]
    return found


def _downstream(graph: gs.Graph) -> list[gs.Node]:
    """Nodes reached from a data-dependent op's outputs (the op included), and the nodes that feed only
    them from graph inputs (e.g. a scale-factor input's Unsqueeze), in graph order."""
    seen: set[int] = set()
    stack = [n for n in graph.nodes if _data_dependent(n)] + _decoding(graph)
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        stack.extend(reader for t in node.outputs for reader in t.outputs)
    inputs, outputs = {t.name for t in graph.inputs}, {t.name for t in graph.outputs}
    grown = bool(seen)
    while grown:
        grown = False
        for n in graph.nodes:
            fed = all(is_const(t) or not t.name or t.name in inputs or (t.inputs and id(t.inputs[0]) in seen)
                      for t in n.inputs)
            if (id(n) not in seen and fed and n.outputs
                    and all(t.name not in outputs and t.outputs and all(id(r) in seen for r in t.outputs)
                            for t in n.outputs)):
                seen.add(id(n))
                grown = True
    return [n for n in graph.nodes if id(n) in seen]


def _cut(graph: gs.Graph, nodes: list[gs.Node]) -> list[gs.Tensor]:
    """Computed head tensors the tail nodes read (their subgraphs' implicit inputs too), first-read order."""
    produced = {t.name for n in nodes for t in n.outputs}
    inputs = {t.name for t in graph.inputs}
    cut: dict[str, gs.Tensor] = {}
    for n in nodes:
        for t in reads(n):
            if t.name and not is_const(t) and t.name not in produced and t.name not in inputs:
                cut.setdefault(t.name, t)
    return list(cut.values())


def split(graph: gs.Graph) -> tuple[Tail | None, str]:
    """Remove the data-dependent tail from `graph` (edited in place); (None, why) when there is none."""
    nodes = _downstream(graph)
    if not nodes:
        return None, ""
    first = f"{nodes[0].op} '{nodes[0].name}'"
    weighted = [n.name for n in nodes if _weighted(n)]
    if weighted:
        return None, f"{first} precedes quantizable layers ({weighted[0]}, ...): the whole model is compiled"
    produced = {t.name for n in nodes for t in n.outputs}
    head_outputs = [t for t in graph.outputs if t.name not in produced]
    cut = [t for t in _cut(graph, nodes) if not any(t is o for o in head_outputs)]
    if not head_outputs and not cut:
        return None, f"{first} reads the graph inputs only: nothing to compile"
    tail = Tail(nodes=nodes, node_inputs=[list(n.inputs) for n in nodes],
                outputs=[t.name for t in graph.outputs], inputs=list(graph.inputs), cut=[t.name for t in cut])
    for n in nodes:             # detach: the head's tensors no longer list tail nodes as readers
        n.inputs.clear()
    ids = {id(n) for n in nodes}
    graph.nodes = [n for n in graph.nodes if id(n) not in ids]
    graph.outputs = head_outputs + cut
    read = {t.name for n in graph.nodes for t in n.inputs} | {t.name for t in graph.outputs}
    graph.inputs = [t for t in graph.inputs if t.name in read]
    why = ("non-tensor outputs" if nodes[0].op in NON_TENSOR else "sizes depend on values"
           if any(_data_dependent(n) for n in nodes) else "outputs picked by ArgMax / TopK")
    return tail, f"{len(nodes)} nodes from {first} on set aside ({why})"


def attach(graph: gs.Graph, tail: Tail) -> None:
    """Put `tail` back into `graph` (in place): its nodes read the head's tensors of the same names
    (constants and the tail's own tensors as they were), the graph's inputs and outputs are the source's."""
    head = graph.tensors()
    own = {t.name for n in tail.nodes for t in n.outputs}
    for n, inputs in zip(tail.nodes, tail.node_inputs):
        n.inputs.extend(t if is_const(t) or t.name in own or not t.name else head.get(t.name, t)
                        for t in inputs)
        for g in n.subgraphs():
            _rebind(g, head, set(tail.cut))
    graph.nodes.extend(tail.nodes)
    every = graph.tensors()
    graph.inputs = [every.get(t.name, t) for t in tail.inputs]
    graph.outputs = [every[name] for name in tail.outputs]


def _rebind(graph: gs.Graph, head: dict, cut: set[str]) -> None:
    """Point a tail subgraph's implicit reads of cut tensors at the head's tensors of those names."""
    own = {t.name for t in graph.inputs} | {t.name for n in graph.nodes for t in n.outputs}
    for n in graph.nodes:
        for i, t in enumerate(n.inputs):
            if t.name in cut and t.name not in own and t.name in head:
                n.inputs[i] = head[t.name]
        for g in n.subgraphs():
            _rebind(g, head, cut)

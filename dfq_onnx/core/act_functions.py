"""Activation functions written as several pointwise ops: GELU's Erf form, Swish, hard-swish, tanh-GELU.

An exporter writes GELU as

    x ─┬─ Div(sqrt 2) ─ Erf ─ Add(1) ─┐
       └──────────────────────────────┴─ Mul ─ Mul(0.5) ─ y          y = x (1 + erf(x / sqrt 2)) / 2

and SiLU as x * Sigmoid(x), hard-swish as x * Clip(x + 3, 0, 6) / 6. Each is a pointwise function of
one tensor x: a set R of pointwise ops whose every non-constant input is x or the output of another op
of R, with one output y leaving R (every other tensor R writes is read only inside R), read by two ops
of R (x gates itself: x * f(x)) and nonlinear (an op of R that is not an affine map of its input: Erf,
Sigmoid, Clip, ..., or a product of two tensors of R). A lone Sigmoid or Relu is not such a set (one op;
its output is the function's output), nor is a bias Add before a Relu, a per-channel affine chain
(x * gamma + beta) or a decomposed LayerNorm's sqrt(var + eps) (x read once).

A backend that recognizes these patterns fuses them into one activation op and runs it in float (the
OpenVINO CPU plugin's GeluFusion / SwishFusion / HSwishFusion, NNCF's fused patterns, which place no
FakeQuantize inside them): a quantizer on x or inside R splits the pattern and only rounds. The
target's `[placement] activation_functions = false` keeps R's ops unquantized (passes/quant_groups.py);
y is quantized where a quantized op reads it. The scalar Mul(0.5) that ends GELU stays in the graph
(core/reader_fold.py does not fold it into the next layer's weights): without it neither runtime
recognizes the pattern and ORT runs GELU as four elementwise kernels instead of one.
"""

from __future__ import annotations

import heapq

import onnx_graphsurgeon as gs

from dfq_onnx.core.graph_utils import is_const, is_float, is_graph_output

NONLINEAR = ("Erf", "Tanh", "Sigmoid", "HardSigmoid", "HardSwish", "Softplus", "Softsign", "Exp", "Relu",
             "LeakyRelu", "Elu", "Selu", "Celu", "Gelu", "Mish", "Clip", "Abs", "Sqrt", "Reciprocal", "Pow",
             "Max", "Min", "Sin", "Cos")
AFFINE = ("Add", "Sub", "Mul", "Div", "Neg")
POINTWISE = NONLINEAR + AFFINE


def _derived(x: gs.Tensor, order: dict[int, int]) -> list[gs.Node]:
    """Nodes (topological order) whose every non-constant input is `x` or written by an earlier one."""
    inside, out = {id(x)}, []
    heap = [(order[id(c)], id(c), c) for c in x.outputs if id(c) in order]   # not a subgraph's node
    heapq.heapify(heap)
    done: set[int] = set()
    while heap:
        _, key, node = heapq.heappop(heap)
        if key in done:
            continue
        done.add(key)
        live = [t for t in node.inputs if t.name and not is_const(t)]
        if node.op in POINTWISE and live and all(id(t) in inside for t in live) \
                and all(is_float(t) for t in node.outputs):
            out.append(node)
            inside.update(id(t) for t in node.outputs)
            for t in node.outputs:
                for c in t.outputs:
                    if id(c) in order:
                        heapq.heappush(heap, (order[id(c)], id(c), c))
    return out


def _nonlinear(region: list[gs.Node]) -> bool:
    for node in region:
        live = [t for t in node.inputs if t.name and not is_const(t)]
        if node.op in NONLINEAR or (node.op in ("Mul", "Div") and len(live) == 2):
            return True
    return False


def _region(graph: gs.Graph, x: gs.Tensor, order: dict[int, int]) -> list[gs.Node]:
    """The activation function of `x` (module docstring), or [] when none."""
    derived = _derived(x, order)
    if len(derived) < 2 or sum(any(t is x for t in n.inputs) for n in derived) < 2:
        return []       # x gates itself (x * f(x)); an affine prefix (a bias Add) stays its layer's
    ids = {id(n) for n in derived}
    exits = [t for n in derived for t in n.outputs
             if is_graph_output(graph, t) or any(id(c) not in ids for c in t.outputs)]
    if len(exits) != 1:
        return []
    return derived if _nonlinear(derived) else []


def activation_functions(graph: gs.Graph) -> list[list[gs.Node]]:
    """Every multi-op activation function in `graph` (module docstring), each as its nodes."""
    regions: list[list[gs.Node]] = []
    order = {id(n): i for i, n in enumerate(graph.nodes)}
    seen: set[int] = set()
    for node in graph.nodes:
        for t in node.inputs:
            if id(t) in seen or is_const(t) or not t.name or not is_float(t):
                continue
            seen.add(id(t))
            if any(r.op in POINTWISE for r in t.outputs):
                region = _region(graph, t, order)
                if region:
                    regions.append(region)
    return regions


def activation_function_nodes(graph: gs.Graph) -> set[int]:
    """ids of the nodes of every multi-op activation function in `graph` (module docstring)."""
    return {id(n) for region in activation_functions(graph) for n in region}


def gelu_nodes(graph: gs.Graph) -> set[int]:
    """ids of the nodes of every activation function computing an Erf or a Tanh: GELU's exact and tanh
    forms, which the runtimes fuse into one kernel only as the whole pattern, its scalar factors included
    (ORT's GeluFusion / FastGeluFusion, OpenVINO's GeluFusion)."""
    return {id(n) for region in activation_functions(graph) if any(n.op in ("Erf", "Tanh") for n in region)
            for n in region}

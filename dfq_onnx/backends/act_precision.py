"""Activation precision per encoding class: the activation groups, their legal precisions, and the
QuantSpec a plan's precisions leave.

An activation group is one class of `QuantSpec.encoding_of` (tensors sharing one scale / zero point:
passthrough chains, Concat inputs and output on targets that share them). Its precision is one decision,
A8 / A16 / float (`FLOAT_BITS`), where the target's `[activation] choices` allow:

    producer ──Q8──DQ──► readers        A8: the integer kernels' form
    producer ──Q16─DQ──► readers        A16: 16-bit Q/DQ (opset 21), readers run dequantized
    producer ───────────► readers       float: no Q/DQ; a Relu/Clip absorbed into the producer's
                                        encoding stays in the graph, weighted readers keep quantized
                                        weights with a float bias (no input scale to build int32 from)

A group whose members include a target's fixed-output op (Sigmoid on HTP) keeps its fixed encoding and
is not a decision. Graph edits live in Emit and the probe; this module only reads the spec and graph.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx_graphsurgeon as gs

from dfq_onnx.core.graph_utils import node_label
from dfq_onnx.core.state import FLOAT_BITS, ActGroup, BitPlan, QuantGroup, QuantSpec


def classes(spec: QuantSpec) -> dict[str, list[str]]:
    """Encoding class representative -> its member tensors, in spec order."""
    out: dict[str, list[str]] = {}
    for t in spec.act_tensors:
        out.setdefault(spec.encoding_of[t], []).append(t)
    return out


def _elements(t: gs.Tensor | None) -> int:
    """Elements per sample; a dynamic dimension counts 1 (costs of a transformer are per token), an
    unknown shape 0."""
    shape = getattr(t, "shape", None)
    if not shape:
        return 0
    return int(np.prod([d if isinstance(d, int) and d > 0 else 1 for d in shape[1:]], dtype=np.int64))


def _writers(graph: gs.Graph, spec: QuantSpec) -> dict[str, str]:
    """Activation tensor -> the quantized node whose kernel writes it (through an absorbed Relu/Clip)."""
    tensors, out = graph.tensors(), {}
    absorbed_out = {}
    for n in graph.nodes:
        if node_label(n) in spec.absorbed and n.outputs:
            absorbed_out[n.outputs[0].name] = spec.absorbed[node_label(n)]
    for t in spec.act_tensors:
        src = tensors.get(absorbed_out.get(t, t))
        prod = src.inputs[0] if src is not None and src.inputs else None
        if prod is not None and node_label(prod) in spec.layers:
            out[t] = node_label(prod)
    return out


def build_act_groups(graph: gs.Graph, spec: QuantSpec, target) -> list[ActGroup]:
    """One ActGroup per encoding class, in spec order, with the precisions the target allows for it."""
    tensors = graph.tensors()
    readers: dict[str, list[str]] = {}
    for n in graph.nodes:
        layer = spec.layers.get(node_label(n))
        if layer is None:
            continue
        ins = n.inputs[:1] if layer.role == "weighted" else n.inputs
        for t in ins:
            if t.name in spec.encoding_of:
                readers.setdefault(t.name, []).append(node_label(n))
    writers = _writers(graph, spec)
    default = target.default_act_bits
    out = []
    for i, (rep, members) in enumerate(classes(spec).items()):
        fixed = any(tensors[t].inputs and tensors[t].inputs[0].op in target.fixed_outputs
                    for t in members if t in tensors)
        choices = (default,) if fixed or not target.act_choices else tuple(target.act_choices)
        out.append(ActGroup(
            id=f"a{i}", rep=rep, tensors=tuple(members),
            readers=tuple(dict.fromkeys(r for t in members for r in readers.get(t, []))),
            writers=tuple(dict.fromkeys(writers[t] for t in members if t in writers)),
            elements=sum(_elements(tensors.get(t)) for t in members), choices=choices))
    return out


def tensor_bits(graph: gs.Graph, spec: QuantSpec, groups: list[QuantGroup], plan: BitPlan,
                act_groups: list[ActGroup], default: int) -> dict[str, int]:
    """Precision of each activation tensor: the plan's activation group choice, else its readers' group's
    activation bits, else its producer's group's, else `default`."""
    bits: dict[str, int] = {}
    node_group = {}
    for g in groups:
        a = plan.bits[g.id][1]
        for t in g.activations:
            bits[t] = a
        for op in g.ops:
            node_group[op] = a
    tensors = graph.tensors()
    for t in spec.act_tensors:
        if t not in bits:
            tensor = tensors.get(t)
            prod = tensor.inputs[0] if tensor is not None and tensor.inputs else None
            bits[t] = node_group.get(node_label(prod), default) if prod is not None else default
    for ag in act_groups:
        if ag.id in plan.acts:
            bits.update(dict.fromkeys(ag.tensors, plan.acts[ag.id]))
    return bits


def float_tensors(plan: BitPlan | None, act_groups: list[ActGroup]) -> set[str]:
    """Members of the activation groups the plan leaves in float."""
    if plan is None:
        return set()
    return {t for ag in act_groups if plan.acts.get(ag.id) == FLOAT_BITS for t in ag.tensors}


def without(spec: QuantSpec, graph: gs.Graph, floats: set[str], consts: bool = True) -> QuantSpec:
    """The spec with the `floats` tensors left unquantized: no Q/DQ on them; a Relu/Clip absorbed into
    one of them stays in the graph (its clipping is no longer done by a zero-point-0 encoding); the
    constant inputs of an elementwise op none of whose activation inputs stays quantized stay float
    (with `consts`; the probe keeps them quantized, for the slots where the group is quantized)."""
    if not floats:
        return spec
    nodes = {node_label(n): n for n in graph.nodes}
    outs = {a: nodes[a].outputs[0].name for a in spec.absorbed if a in nodes}
    kept = tuple(t for t in spec.act_tensors if t not in floats)
    live = set(kept)
    return dataclasses.replace(
        spec, act_tensors=kept, encoding_of={t: r for t, r in spec.encoding_of.items() if t not in floats},
        absorbed={a: s for a, s in spec.absorbed.items() if outs.get(a) not in floats},
        const_inputs=tuple((n, c) for n, c in spec.const_inputs
                           if not consts or not any(t.name in floats for t in nodes[n].inputs)
                           or any(t.name in live for t in nodes[n].inputs)))


def touched(ag: ActGroup, layers, float_output_ops) -> tuple[str, ...]:
    """Weighted nodes whose integer kernel an A16 / float precision of `ag` takes away: its weighted readers,
    and its weighted writers unless their op keeps an integer kernel with a float output."""
    read = [r for r in ag.readers if layers[r].role == "weighted"]
    wrote = [w for w in ag.writers if layers[w].role == "weighted" and layers[w].op not in float_output_ops]
    return tuple(dict.fromkeys(read + wrote))

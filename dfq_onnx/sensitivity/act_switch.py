"""Activation-precision switches in the probe: one int64 select input per activation group.

Every member tensor t of a switched group is rewritten so that its producer writes `t_act_input` and a
switch writes t again, driven by `select_<group>` (slot 0 = float, slot k = the k-th activation
bit-width):

    producer ── t_act_input ─┬─ If(select == 0): Identity ────────────────┐
                             └─ else If(select == 1): Q8 ─ DQ8 ─ else: Q16 ─ DQ16 ─┴─► t ─► readers

Readers keep reading t, so a segment cut that crosses t caches the switched value under the same name
as the FP32 twin (where t is the producer's float output = slot 0). A member that is a graph input gets
a switch writing `t_act` that its readers read instead (attached to each reader's segment); so does a
tensor some of whose readers Emit leaves reading it float (`float_reads`; they keep reading t).

Q/DQ in a branch are those Emit writes for the group's range at that bit-width (the union of its
members' ranges), so a plan's configuration computes what Emit's model for the plan computes. A
Relu/Clip that Emit would absorb into a zero-point-0 encoding stays in the graph before the switch
(Q of a clipped tensor with zero point 0 equals Q of the unclipped one), so the float slot keeps it.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx_graphsurgeon as gs

from dfq_onnx.backends.qdq import Encoding
from dfq_onnx.core import ir
from dfq_onnx.core.graph_utils import node_label
from dfq_onnx.core.state import ActGroup


def _branch(src: gs.Tensor, enc: Encoding | None, tag: str, opset: int) -> gs.Graph:
    out = gs.Variable(f"{tag}_output", dtype=np.float32)
    if enc is None:
        nodes = [gs.Node("Identity", name=tag, inputs=[src], outputs=[out])]
    else:
        scale, zp = enc.constants(tag)
        q = gs.Variable(f"{tag}_quantized", dtype=ir.NP_STORAGE[enc.dtype])
        nodes = [gs.Node("QuantizeLinear", name=f"{tag}_QuantizeLinear", inputs=[src, scale, zp],
                         outputs=[q]),
                 gs.Node("DequantizeLinear", name=f"{tag}_DequantizeLinear", inputs=[q, scale, zp],
                         outputs=[out])]
    return gs.Graph(nodes=nodes, outputs=[out], name=tag, opset=opset)


def nested_if(conds: list[gs.Variable], branches: list, out: gs.Variable, name: str, opset: int) -> gs.Node:
    """If(conds[0], branches[0], If(conds[1], branches[1], ... branches[-1])) writing `out`;
    `branches[k]` is a callable tag -> gs.Graph. Returns the outer If node (not added to any graph)."""
    tail = branches[-1](f"{name}_slot{len(branches) - 1}")
    node = None
    for k in range(len(branches) - 2, -1, -1):
        result = out if k == 0 else gs.Variable(f"{name}_if{k}_output", dtype=np.float32)
        node = gs.Node("If", name=f"{name}_if{k}", inputs=[conds[k]], outputs=[result], attrs={
            "then_branch": branches[k](f"{name}_slot{k}"), "else_branch": tail})
        if k:
            tail = gs.Graph(nodes=[node], outputs=[result], name=f"{name}_else{k}", opset=opset)
    return node


def select_input(graph: gs.Graph, gid: str, slots: int) -> tuple[gs.Variable, list[gs.Variable]]:
    """The int64 scalar input select_<gid> and its Equal(select, k) conditions for k < slots - 1."""
    select = gs.Variable(f"select_{gid}", dtype=np.int64, shape=[])
    graph.inputs.append(select)
    conds = [gs.Variable(f"select_{gid}_is{k}", dtype=np.bool_, shape=[]) for k in range(slots - 1)]
    for k, cond in enumerate(conds):
        graph.nodes.append(gs.Node("Equal", name=f"{cond.name}_Equal", outputs=[cond], inputs=[
            select, gs.Constant(f"{cond.name}_slot", np.array(k, np.int64))]))
    return select, conds


def insert_act_switches(graph: gs.Graph, groups: list[ActGroup],
                        encodings: Mapping[str, Mapping[int, Encoding]], bits: tuple[int, ...],
                        float_reads: Mapping[str, frozenset[str]] | None = None):
    """Switch every member of `groups` over [float, *bits] (see the module docstring); the readers
    labelled in `float_reads[t]` read t float, as Emit leaves them (backends/act_qdq.float_readers).

    Returns (selects: group id -> select input name, attached: node label -> switch node labels that
    belong to its segment, units: node label -> group ids it carries, inputs: switched tensor name ->
    the name its readers now read).
    """
    tensors = graph.tensors()
    selects, attached, units, reads = {}, {}, {}, {}
    for ag in groups:
        select, conds = select_input(graph, ag.id, len(bits) + 1)
        selects[ag.id] = select.name
        for t in ag.tensors:
            tensor = tensors[t]
            keep = (float_reads or {}).get(t, frozenset())
            if any(o is tensor for o in graph.outputs):
                keep = frozenset()
            if tensor.inputs and not keep:   # the producer writes t_act_input, the switch writes t
                prod = tensor.inputs[0]
                owners, out = [node_label(prod)], tensor
                src = gs.Variable(f"{t}_act_input", dtype=np.float32, shape=tensor.shape)
                prod.outputs[[o.name for o in prod.outputs].index(t)] = src
            else:                 # a graph input, or float readers: the others read the switched copy t_act
                switched = [n for n in tensor.outputs if node_label(n) not in keep]
                owners, src = [node_label(n) for n in switched], tensor
                out = gs.Variable(f"{t}_act", dtype=np.float32, shape=tensor.shape)
                for n in switched:
                    n.inputs[[i.name for i in n.inputs].index(t)] = out
            branches = [lambda tag, s=src: _branch(s, None, tag, graph.opset)] + [
                lambda tag, s=src, e=encodings[ag.id][b]: _branch(s, e, tag, graph.opset) for b in bits]
            node = nested_if(conds, branches, out, f"{t}_act_switch", graph.opset)
            graph.nodes.append(node)
            reads[t] = out.name
            for owner in owners:
                attached.setdefault(owner, []).append(node.name)
                units.setdefault(owner, []).append(ag.id)
    return selects, attached, {k: tuple(dict.fromkeys(v)) for k, v in units.items()}, reads

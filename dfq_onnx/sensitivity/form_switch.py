"""Switches of form layers in the probe: the slot's weights picked by a Gather, no If subgraph.

A form layer (core/candidates.py) keeps its node and its name; its weight input becomes the slot the
group's int64 select picks from one stacked constant, and its activation input (MatMul) the treatment
the slot's kernel applies (backends/forms.simulation_nodes), run only when selected:

    select_g ─► Gather(W_stack [K+1, ...], axis 0) ─────────────────────────┐
    x ─► If(dyn slot?, DynamicQuantizeLinear ─ DequantizeLinear, x) ─► If(b32 slot?, int8 blocks of 32,
         ·) ─► ... ─► MatMul ─► y       (one If per treatment the candidates need: dynamic int8, and the
                                        block-wise int8 of MatMulNBits at accuracy level 4 per block size)

Slot 0 is FP32 (the weight as it is, x untouched); a float candidate (W32A32) reads slot 0 too. A
Gather keeps only the table rows the scoring samples read (sensitivity/gather_rows.py) and remaps its
indices first. Every added node belongs to the layer's segment (`attached`), so segment cuts see the
same tensors as in the FP32 twin. ONNX Runtime loads one stacked constant per layer instead of K+1
subgraphs (on MiniLM-L3 with 6 candidates per layer, the If switches took ~1 GB of session memory for
161 MB of weights); the weights reach MatMul as a run-time input, so they are not prepacked.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from dfq_onnx.backends import forms
from dfq_onnx.core import candidates
from dfq_onnx.sensitivity.gather_rows import remap_nodes, remap_table


def slot_of(keys: tuple) -> dict:
    """Candidate -> slot index (FP32 and float candidates share slot 0)."""
    out, k = {None: 0}, 1
    for c in keys:
        if candidates.form(c) == "float":
            out[c] = 0
        else:
            out[c], k = k, k + 1
    return out


def _variants(x: gs.Tensor, keys: tuple, settings, opset: int) -> list[tuple[list[int], object]]:
    """[(slots, builder)]: the activation treatments the candidates need, each once; builder(src, tag)
    -> (nodes, output) computes it from `src`."""
    slots, seen = slot_of(keys), {}
    for c in keys:
        probe, _ = forms.simulation_nodes(x, c, settings, "probe", opset)
        if not probe:
            continue
        kind = (candidates.form(c), candidates.block(c, x.shape[-1]) if x.shape else 0)
        if kind not in seen:
            seen[kind] = ([], lambda src, tag, c=c: forms.simulation_nodes(src, c, settings, tag, opset))
        seen[kind][0].append(slots[c])
    return list(seen.values())


def _pick(select: gs.Tensor, slots: list[int], total: int, build, x: gs.Tensor, tag: str,
          opset: int) -> tuple[list, gs.Tensor]:
    """If(select in slots, the treatment of x, x): the treatment runs only when its slot is selected."""
    table = np.zeros(total, bool)
    table[slots] = True
    cond = gs.Variable(f"{tag}_cond", dtype=np.bool_, shape=[])
    out = gs.Variable(f"{tag}_out", dtype=np.float32, shape=x.shape)
    sim, sim_out = build(x, f"{tag}_then")
    keep = gs.Variable(f"{tag}_else_out", dtype=np.float32)
    then = gs.Graph(nodes=sim, outputs=[sim_out], name=f"{tag}_then", opset=opset)
    other = gs.Graph(nodes=[gs.Node("Identity", name=f"{tag}_keep", inputs=[x], outputs=[keep])],
                     outputs=[keep], name=f"{tag}_else", opset=opset)
    return [gs.Node("Gather", name=f"{tag}_is", inputs=[gs.Constant(f"{tag}_table", table), select],
                    outputs=[cond]),
            gs.Node("If", name=f"{tag}_if", inputs=[cond], outputs=[out],
                    attrs={"then_branch": then, "else_branch": other})], out


def form_switch(graph: gs.Graph, node: gs.Node, layer, keys: tuple, weights: list[np.ndarray],
                select: gs.Tensor, settings, rows: np.ndarray | None) -> list[str]:
    """Make `node` read the slot `select` picks (module docstring); `weights[k]` is slot k's weight
    (FP32 first, then the non-float candidates of `keys` in order). Returns the added node names."""
    tag, opset = node.name, graph.opset
    total = int(node.inputs[layer.weight_index].shape[0])
    stack = gs.Constant(f"{tag}_weight_stack", np.ascontiguousarray(np.stack(weights), np.float32))
    w = gs.Variable(f"{tag}_weight_slot", dtype=np.float32)
    added = [gs.Node("Gather", name=f"{tag}_weight_pick", inputs=[stack, select], outputs=[w],
                     attrs={"axis": 0})]
    node.inputs[layer.weight_index] = w
    if rows is not None:       # a Gather's table cut to the rows the samples read
        more, node.inputs[1] = remap_nodes(node.inputs[1], remap_table(total, rows), tag)
        added += more
    if layer.weight_index == 1:
        x = node.inputs[0]
        for i, (slots, build) in enumerate(_variants(x, keys, settings, opset)):
            more, x = _pick(select, slots, len(weights), build, x, f"{tag}_pick{i}", opset)
            added += more
        node.inputs[0] = x
    graph.nodes += added
    return [n.name for n in added]

"""Switches of form layers in the probe: the slot's weights picked at run time from fed inputs.

A form layer (core/candidates.py) keeps its node and its name; its weight input becomes the slot the
group's int64 select picks, and its activation input (MatMul) the treatment the slot's kernel applies
(backends/forms.simulation_nodes), run only when selected. A MatMul whose candidates all have codes
(backends/weight_codes.py: dynamic int8, block-wise) dequantizes the selected slot's codes:

    select_g ─► If(slot 0?, then: W (FP32, as it is),
                            else: (Cast(Gather(codes [K, [G, B,] N] uint8, select - 1)) - Gather(zeros, ·))
                                  x Gather(scales, ·)  ─► [K, N])  ───────────┐
    x ─► If(dyn slot?, DynamicQuantizeLinear ─ DequantizeLinear, x) ─► If(b32 slot?, int8 blocks of 32,
         ·) ─► ... ─► MatMul ─► y       (one If per treatment the candidates need: dynamic int8, and the
                                        block-wise int8 of MatMulNBits at accuracy level 4 per block size)

(the exact float32 values of `forms.weight_hat`: a candidate costs a quarter of its float weights, and
slot 0 is the model's own array); other form layers (a Gather table, a per-tensor form) pick from one
stacked float tensor, Gather(W_stack [K+1, ...], axis 0). The weights, codes and stacks are not constants
of the probe but inputs it is fed (`fed`: name -> array, `ProbeModel.fed`): ONNX Runtime copies every
initializer it is given, in memory or not (ORT 1.32: a session over an 85 MB stack grew 92 MB), and the
MatMul reads a run-time tensor either way, so the values and kernels are those of a constant stack.

Slot 0 is FP32 (the weight as it is, x untouched); a float candidate (W32A32) reads slot 0 too. A
Gather keeps only the table rows the scoring samples read (sensitivity/gather_rows.py) and remaps its
indices first. Every added node belongs to the layer's segment (`attached`), so segment cuts see the
same tensors as in the FP32 twin. ONNX Runtime loads one pick per layer instead of K+1 subgraphs (on
MiniLM-L3 with 6 candidates per layer, the If switches took ~1 GB of session memory for 161 MB of
weights); the weights reach MatMul as a run-time input, so they are not prepacked.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from dfq_onnx.backends import forms
from dfq_onnx.backends.weight_codes import WeightCodes, common_block, weight_codes
from dfq_onnx.core import candidates
from dfq_onnx.core.graph_utils import const_values
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


def slot_weights(node: gs.Node, layer, keys: tuple, rows: np.ndarray | None, h=None) -> list:
    """Slot weights of a form layer: FP32, then each non-float candidate's, as codes where every one has
    them (a MatMul, module docstring), else float arrays; a Gather with `rows` keeps only those rows of
    its table; `h` weighs the clip search as Emit's."""
    w = np.asarray(const_values(node.inputs[layer.weight_index]), np.float32)
    w = w if rows is None else w[rows]
    quantized = [c for c in keys if candidates.form(c) != "float"]
    codes = [weight_codes(node.op, w, c, h) for c in quantized] if layer.weight_index == 1 else [None]
    if quantized and None not in codes:
        return [w, *codes]
    return [w] + [forms.weight_hat(node.op, w, c, h) for c in quantized]


def _fed(fed: dict, name: str, values: np.ndarray) -> gs.Variable:
    """A probe input `name` fed with `values` (module docstring)."""
    fed[name] = values
    return gs.Variable(name, dtype=values.dtype, shape=list(values.shape))


def _code_pick(tag: str, weights: list, select: gs.Tensor, fed: dict, opset: int) -> tuple[list, gs.Variable]:
    """If(select == 0, W, the selected slot's codes dequantized) (module docstring)."""
    slots = [c.expand(common_block(weights[1:])) for c in weights[1:]]
    (k, n), groups = slots[0].codes.shape, slots[0].scale.shape[0]
    stack = {part: _fed(fed, f"{tag}_weight_{part}", np.stack([getattr(c, part) for c in slots])
                        .reshape(len(slots), groups, -1, n)) for part in ("codes", "zero", "scale")}
    w = _fed(fed, f"{tag}_weight_fp32", weights[0])
    index = gs.Variable(f"{tag}_weight_index", dtype=np.int64, shape=[])
    one = gs.Constant(f"{tag}_weight_one", np.ones((), np.int64))
    picked = {p: gs.Variable(f"{tag}_weight_{p}_pick", dtype=t.dtype) for p, t in stack.items()}
    codes, centred, w_hat = (gs.Variable(f"{tag}_weight_{p}", dtype=np.float32)
                             for p in ("float_codes", "centred", "dequantized"))
    out = gs.Variable(f"{tag}_weight_slot", dtype=np.float32, shape=[k, n])
    body = [gs.Node("Sub", name=f"{tag}_weight_index_Sub", inputs=[select, one], outputs=[index]),
            *(gs.Node("Gather", name=f"{tag}_weight_{p}_Gather", inputs=[stack[p], index],
                      outputs=[picked[p]], attrs={"axis": 0}) for p in stack),
            gs.Node("Cast", name=f"{tag}_weight_Cast", inputs=[picked["codes"]], outputs=[codes],
                    attrs={"to": 1}),
            gs.Node("Sub", name=f"{tag}_weight_Sub", inputs=[codes, picked["zero"]], outputs=[centred]),
            gs.Node("Mul", name=f"{tag}_weight_Mul", inputs=[centred, picked["scale"]], outputs=[w_hat]),
            gs.Node("Reshape", name=f"{tag}_weight_Reshape",
                    inputs=[w_hat, gs.Constant(f"{tag}_weight_shape", np.array([k, n], np.int64))],
                    outputs=[gs.Variable(f"{tag}_weight_else_out", dtype=np.float32)])]
    keep = gs.Variable(f"{tag}_weight_then_out", dtype=np.float32)
    then = gs.Graph(nodes=[gs.Node("Identity", name=f"{tag}_weight_keep", inputs=[w], outputs=[keep])],
                    outputs=[keep], name=f"{tag}_weight_then", opset=opset)
    other = gs.Graph(nodes=body, outputs=[body[-1].outputs[0]], name=f"{tag}_weight_else", opset=opset)
    cond = gs.Variable(f"{tag}_weight_is_fp32", dtype=np.bool_, shape=[])
    zero = gs.Constant(f"{tag}_weight_slot0", np.zeros((), np.int64))
    return [gs.Node("Equal", name=f"{tag}_weight_is_fp32", inputs=[select, zero], outputs=[cond]),
            gs.Node("If", name=f"{tag}_weight_pick", inputs=[cond], outputs=[out],
                    attrs={"then_branch": then, "else_branch": other})], out


def form_switch(graph: gs.Graph, node: gs.Node, layer, keys: tuple, weights: list, select: gs.Tensor,
                settings, rows: np.ndarray | None, fed: dict) -> list[str]:
    """Make `node` read the slot `select` picks (module docstring); `weights` are `slot_weights`' (FP32
    first, then the non-float candidates of `keys` in order), the arrays the probe is fed go to `fed`.
    Returns the added node names."""
    tag, opset = node.name, graph.opset
    total = int(node.inputs[layer.weight_index].shape[0])
    if len(weights) > 1 and isinstance(weights[1], WeightCodes):
        added, w = _code_pick(tag, weights, select, fed, opset)
    else:
        stack = _fed(fed, f"{tag}_weight_stack", np.ascontiguousarray(np.stack(weights), np.float32))
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

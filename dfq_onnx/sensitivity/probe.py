"""The probe model: one ONNX Runtime session that evaluates any per-group weight bit-width configuration.

Built once from the FP32 (BN-folded) graph; a configuration is a feed, never a rebuild. Every weighted
layer becomes a switch over K+1 weight slots (slot 0 = FP32, slot k = Emit's weights at bits_k), driven
by one int64 scalar input per quantizer group:

    select_g ─ Equal(0) ─ is0 ─┐             ┌ then: Conv(x, W_0, b_0) ─┐
             ─ Equal(1) ─ is1 ─┼─► If(is0) ──┤                          ├─► y
                               │             └ else: If(is1) ─ then: Conv(x, W_1, b_1)
                               │                            └ else: Conv(x, W_2, b_2)
    x ─Q─DQ──────────────────── (outer-scope input of every branch)      y ─Q─DQ─► ...

Only the taken branch runs, and inside it the weight is a constant, so ONNX Runtime keeps its fast
constant-weight kernels (NCHWc convolutions with prepacked filters). A Gather/one-hot selection makes
the weight a run-time tensor and loses them: on ResNet-56 at batch 256 an evaluation then costs
1.6-2.1x a plain FP32 forward, against 1.3-1.4x with the switch. b_k is the int32 bias round trip
(scale input_scale * weight_scale_k) when the target asks for int32 biases.

Activation Q/DQ pairs are those Emit writes for the same ranges and activation bits (constant scale and
zero point, shared per encoding class, Relu/Clip absorbed into a zero-point-0 output encoding), and
constant inputs of elementwise ops are fake-quantized like Emit does. Slot k of a weight holds exactly
the float values Emit's DequantizeLinear produces for `bits_k` (`emitted_weight`), so a configuration
and the QDQ model Emit writes for the same plan compute the same function. With
`quantize_activations=False` no activation Q/DQ is inserted and the Relus stay (a weights-only study).

Segmented evaluation (`Probe(..., segmented=True)`, what the scorer uses): the probe is also cut into
segments with fast FP32-weight twins, and a configuration runs from the first segment it changes, on the
cached FP32 prefix (`dfq_onnx.sensitivity.segments`): a single costs about half a forward instead of 1.3-2.9x.

Parts: the Q/DQ it writes (`probe_qdq`), running it (`probe_run`: `session`, `Probe`); FP32, Probe,
session and emitted_weight are importable from here as before; activation encodings and their Q/DQ are
EmitQDQ's own (dfq_onnx/backends/act_qdq.py).

Memory bound: every weighted layer holds K+1 float32 copies of its weight (and bias), K = number of
weight candidates, so the probe's constants take (K+1) x 4 bytes x parameters -- ResNet-56 (0.85 M
parameters, K=3): 14 MB; ResNet-50 (25.6 M): 410 MB -- and ORT may keep one prepacked (e.g. NCHWc
reordered) copy of each, at most doubling that. Activation memory is that of one plain forward pass
of `batch` samples, since only the taken branch of each switch runs. A probe above protobuf's 2 GB
is refused (score fewer candidates). Form layers are fed, not constants (form_switch.py): a MatMul's
candidates as 8-bit codes (1 byte per parameter each) beside the model's own FP32 array.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Mapping

import numpy as np
import onnx_graphsurgeon as gs

from dfq_onnx.backends import forms
from dfq_onnx.backends.act_precision import without
from dfq_onnx.backends.act_qdq import class_encodings, float_readers, group_encodings, insert_qdq
from dfq_onnx.backends.input_moments import importance
from dfq_onnx.backends.qdq import (
    Encoding,
)
from dfq_onnx.core import ir, model_files
from dfq_onnx.core.errors import UnsupportedModelError
from dfq_onnx.core.graph_utils import const_values, node_label
from dfq_onnx.core.graph_utils import reads as node_reads
from dfq_onnx.core.state import ActGroup, QuantGroup, QuantSpec, Range
from dfq_onnx.sensitivity.act_switch import insert_act_switches, select_input
from dfq_onnx.sensitivity.dither import dither_activations
from dfq_onnx.sensitivity.form_switch import form_switch, slot_weights
from dfq_onnx.sensitivity.probe_qdq import emitted_weight as emitted_weight
from dfq_onnx.sensitivity.probe_run import FP32 as FP32
from dfq_onnx.sensitivity.probe_run import Probe as Probe
from dfq_onnx.sensitivity.probe_run import session as session

log = logging.getLogger(__name__)



def _branch(node: gs.Node, layer, w: np.ndarray, b: np.ndarray | None, tag: str, opset: int) -> gs.Graph:
    """A one-node subgraph: `node` with constant weight `w` (and bias `b`), other inputs from outside."""
    ins = list(node.inputs)
    ins[1] = gs.Constant(f"{tag}_weight", np.ascontiguousarray(w, np.float32))
    if layer.bias is not None:
        ins[2] = gs.Constant(f"{tag}_bias", np.ascontiguousarray(b, np.float32))
    out = gs.Variable(f"{tag}_output", dtype=np.float32)
    body = gs.Node(node.op, name=tag, inputs=ins, outputs=[out], attrs=dict(node.attrs))
    return gs.Graph(nodes=[body], outputs=[out], name=tag, opset=opset)


def _switch(graph: gs.Graph, node: gs.Node, layer, slots: list, conds: list[gs.Variable]) -> None:
    """Replace `node` by If(select == 0, slot 0, If(select == 1, slot 1, ... slot K))."""
    label, opset, out = node_label(node), graph.opset, node.outputs[0]
    tail = _branch(node, layer, *slots[-1], f"{label}_slot{len(slots) - 1}", opset)
    for k in range(len(slots) - 2, -1, -1):
        result = out if k == 0 else gs.Variable(f"{label}_switch{k}_output", dtype=np.float32)
        switch = gs.Node("If", name=f"{label}_switch{k}", inputs=[conds[k]], outputs=[result], attrs={
            "then_branch": _branch(node, layer, *slots[k], f"{label}_slot{k}", opset), "else_branch": tail})
        if k:
            tail = gs.Graph(nodes=[switch], outputs=[result], name=f"{label}_else{k}", opset=opset)
    node.outputs.clear()
    graph.nodes.append(switch)


def _slot(w, b, x_scale, bits: int, layer, target, node, mean, h=None) -> tuple:
    """Emit's weights at `bits` (clip search weighted by `h`, as Emit's); with `mean` = (E[x], tap
    fractions), the bias carries CorrectBias's correction b - (W_hat - W) E[x] (passes/bias_correction.py)."""
    if mean is None or b is None:
        return emitted_weight(w, b, x_scale, bits, layer.axis, target, h)
    from dfq_onnx.corrections.formulas import mean_shift
    from dfq_onnx.corrections.layer_pairs import linear_kind

    w_hat, _ = emitted_weight(w, b, x_scale, bits, layer.axis, target, h)
    b_corr = (b - mean_shift(w_hat, w, mean[0], linear_kind(node), mean[1])).astype(np.float32)
    return emitted_weight(w, b_corr, x_scale, bits, layer.axis, target, h)


def _select_weights(graph: gs.Graph, spec: QuantSpec, groups, bits: tuple[int, ...], by_dq: dict,
                    target, input_means: Mapping[str, tuple] | None = None,
                    form_keys: Mapping[str, tuple] | None = None,
                    form_rows: Mapping[str, np.ndarray] | None = None,
                    attached: dict | None = None, moments: Mapping[str, np.ndarray] | None = None,
                    fed: dict | None = None) -> dict[str, str]:
    """Replace every weighted layer by a switch over its K+1 weight slots, driven by select_<group>
    (slot k + 1 = weight bits bits[k]); a form group (`form_keys`) gets form switches instead
    (sensitivity/form_switch.py), whose added nodes go to `attached` (layer -> node names) and fed
    arrays to `fed` (input name -> array). `moments`:
    the layers' input E[x_j^2] weighing the low-bit clip search (backends/input_moments.py), as Emit's."""
    nodes = {node_label(n): n for n in graph.nodes}
    selects: dict[str, str] = {}
    done: dict[str, list[np.ndarray]] = {}   # shared weight -> its slots (later readers keep a float bias)
    for group in groups:
        if not group.layers:
            continue
        keys = (form_keys or {}).get(group.id)
        select, conds = select_input(graph, group.id, 1 if keys else len(bits) + 1)
        selects[group.id] = select.name
        for name in group.layers:
            node, layer = nodes[name], spec.layers[name]
            h = importance(node, layer, moments)
            if keys:
                rows = (form_rows or {}).get(name)
                slots = slot_weights(node, layer, keys, rows, None if rows is not None else h)
                added = form_switch(graph, node, layer, keys, slots, select, target.form_settings, rows,
                                    fed if fed is not None else {})
                (attached if attached is not None else {}).setdefault(name, []).extend(added)
                continue
            b = const_values(node.inputs[2]).astype(np.float32) if layer.bias else None
            if layer.weight in done:
                slots = [(w, b) for w in done[layer.weight]]
            else:
                w = const_values(node.inputs[1]).astype(np.float32)
                x_enc = by_dq.get(node.inputs[0].name)
                x_scale = None if x_enc is None else float(x_enc.scale)
                mu = (input_means or {}).get(name)
                slots = [(w, b)] + [_slot(w, b, x_scale, k, layer, target, node, mu, h) for k in bits]
                done[layer.weight] = [s[0] for s in slots]
            _switch(graph, node, layer, slots, conds)
    return selects


def _fix_weights(graph: gs.Graph, spec: QuantSpec, bits: int, x_enc: Mapping[str, Encoding], target,
                 moments: Mapping[str, np.ndarray] | None = None) -> None:
    """Every weighted layer's weight (and bias) replaced by Emit's values at `bits`, as constants (the
    activation probe measures its groups with the weights the plan will have)."""
    nodes = {node_label(n): n for n in graph.nodes}
    done: dict[str, gs.Constant] = {}
    for name, layer in spec.layers.items():
        if layer.role != "weighted" or name not in nodes:
            continue
        node = nodes[name]
        if layer.form:        # the uniform plan's form candidate (its activation treatment left out)
            w = const_values(node.inputs[layer.weight_index])
            cand = forms.uniform_fit(target, layer.op, w.shape, bits)
            if cand is not None:
                w_hat = forms.weight_hat(node.op, w, cand, importance(node, layer, moments))
                node.inputs[layer.weight_index] = gs.Constant(f"{layer.weight}_form{bits}", w_hat)
            continue
        b = const_values(node.inputs[2]).astype(np.float32) if layer.bias else None
        enc = x_enc.get(node.inputs[0].name)
        w_hat, b_hat = emitted_weight(const_values(node.inputs[1]).astype(np.float32), b,
                                      None if enc is None else float(enc.scale), bits, layer.axis, target,
                                      importance(node, layer, moments))
        if layer.weight not in done:
            done[layer.weight] = gs.Constant(f"{layer.weight}_w{bits}",
                                             np.ascontiguousarray(w_hat, np.float32))
        node.inputs[1] = done[layer.weight]
        if layer.bias is not None:
            node.inputs[2] = gs.Constant(f"{name}_b{bits}", np.ascontiguousarray(b_hat, np.float32))


@dataclass(frozen=True)
class ProbeModel:
    model: object                    # onnx.ModelProto
    bits: tuple[int, ...]            # weight bits of slots 1..K (slot 0 is FP32)
    selects: dict[str, str]          # group id -> its int64 select input
    inputs: tuple[str, ...]          # the model's data inputs
    graph: gs.Graph | None = None        # the probe as a gs graph (for dfq_onnx.sensitivity.segments)
    fast_graph: gs.Graph | None = None   # the same before switching: FP32 weights, switched activations float
    layer_group: dict | None = None      # weighted layer -> group id
    act_bits: tuple[int, ...] = ()       # activation bits of slots 1..K of the activation switches (0: float)
    act_selects: dict = field(default_factory=dict)   # activation group id -> its select input
    attached: dict = field(default_factory=dict)      # node label -> activation switch nodes of its segment
    act_units: dict = field(default_factory=dict)     # node label -> activation group ids it carries
    form_keys: dict = field(default_factory=dict)     # form group -> its candidates (slots 1..K)
    dither: dict = field(default_factory=dict)        # offset input -> its class's scale (dither.py)
    fed: dict = field(default_factory=dict)           # input -> the array it is fed (form_switch.py)

    @property
    def units(self) -> dict[str, tuple[str, ...]]:
        """Node label -> the group ids (weights and activations) whose select it reads (segments.py)."""
        out = {layer: (g,) for layer, g in (self.layer_group or {}).items()}
        for label, ids in self.act_units.items():
            out[label] = tuple(dict.fromkeys(out.get(label, ()) + tuple(ids)))
        return out


def build_probe(graph: gs.Graph, spec: QuantSpec, groups: list[QuantGroup], ranges: Mapping[str, Range],
                target, weight_bits: tuple[int, ...], act_bits: int,
                quantize_activations: bool = True,
                input_means: Mapping[str, tuple] | None = None,
                form_keys: Mapping[str, tuple] | None = None,
                form_rows: Mapping[str, np.ndarray] | None = None,
                act_groups: tuple[ActGroup, ...] = (), act_choices: tuple[int, ...] = (),
                fixed_weight_bits: int | None = None,
                input_moments: Mapping[str, np.ndarray] | None = None, dither: bool = False) -> ProbeModel:
    """The probe model for `weight_bits` candidates (see the module docstring); `graph` is untouched.
    `act_groups` get activation switches over float and `act_choices` (dfq_onnx.sensitivity.act_switch)
    instead of fixed Q/DQ; they are float in the fast twin. `fixed_weight_bits`: every weight is Emit's at
    those bits (constants; give no `groups` then). `form_keys`: each form group's candidates
    (core/candidates.py); `form_rows`: the table rows each form Gather keeps (sensitivity/gather_rows.py).
    `dither`: the activation Q/DQ pairs read offset inputs (sensitivity/dither.py)."""
    g = ir.copy_graph(graph)
    inputs = tuple(t.name for t in g.inputs)
    by_dq: dict[str, Encoding] = {}
    floats = float_readers(g, spec, target)      # readers Emit leaves float (OpenVINO)
    fixed = without(spec, g, {t for ag in act_groups for t in ag.tensors}, consts=False)
    encs = group_encodings(g, act_groups, ranges, target, act_choices) if act_groups else {}
    if fixed_weight_bits is not None:   # weights see the base encodings of their inputs (int32 bias)
        _fix_weights(g, spec, fixed_weight_bits, class_encodings(g, spec, ranges, target, act_bits), target,
                     input_moments)
    if quantize_activations:
        encodings = class_encodings(g, fixed, ranges, target, act_bits)
        by_dq = insert_qdq(g, fixed, encodings, target)
    scales = {}
    if dither and quantize_activations:     # the layers' int32 biases keep their input's scale
        scales, renamed = dither_activations(g)
        by_dq.update({renamed[t]: enc for t, enc in list(by_dq.items()) if t in renamed})
    fast = ir.copy_graph(g).cleanup().toposort()
    act = ({}, {}, {})
    if act_groups:
        *act, reads = insert_act_switches(g, list(act_groups), encs, tuple(act_choices), floats)
        by_dq.update({reads[t]: encs[ag.id][act_bits] for ag in act_groups for t in ag.tensors
                      if act_bits in encs[ag.id]})   # int32 biases at the base activation scale
    fed: dict[str, np.ndarray] = {}
    selects = _select_weights(g, spec, groups, tuple(weight_bits), by_dq, target, input_means, form_keys,
                              form_rows, act[1], input_moments, fed)
    tensors = {t.name: t for n in g.nodes for t in node_reads(n)}      # If branches read the codes
    g.inputs += [tensors[name] for name in fed]
    g.cleanup().toposort()
    model = ir.session_model(g, ir_version=ir.min_ir_version(g.opset))
    if model.ByteSize() > model_files.TWO_GB:
        raise UnsupportedModelError(f"the probe model ({model.ByteSize() / 2**30:.1f} GB) exceeds 2 GB; "
                                    "score fewer weight candidates")
    log.debug("probe: %d groups, %d activation switches, %d nodes, %.1f MB", len(selects), len(act[0]),
              len(g.nodes), model.ByteSize() / 2**20)
    layer_group = {layer: grp.id for grp in groups for layer in grp.layers}
    return ProbeModel(model, tuple(weight_bits), selects, inputs, g, fast, layer_group,
                      tuple(act_choices) if act_groups else (), *act, form_keys=dict(form_keys or {}),
                      dither=scales, fed=fed)


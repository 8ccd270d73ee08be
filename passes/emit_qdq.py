"""Write the QDQ model for the bit plan, following the target profile's conventions.

Per quantized node (ort-cpu profile shown):

    x ─Q─DQ─┐
    W_q ─DQ─┼─► Conv ─► (Relu absorbed) ─Q─DQ─► ...
    b_q ─DQ─┘            output encoding: zero point 0 when the Relu was absorbed

* activations: per tensor, asymmetric (or symmetric if the target says so), range = union of the
  ranges of every tensor sharing the encoding, widened to contain 0;
* weights: symmetric per-channel on the layer's output-channel axis, narrow range, zero point 0;
* bias: int32 with scale = input_scale * weight_scale when the target asks for it (else float);
* fixed output encodings (target [fixed_outputs], e.g. Sigmoid on QNN HTP): scale = span / 2^bits,
  zero point = -min / scale, whatever the measured range.
  A weight channel whose scale is so small that its bias would overflow int32 gets its scale raised.
* a float Div by a positive constant between two quantizers whose encodings agree is dropped: its
  readers dequantize the input's codes with the output's scale (dfq_onnx/backends/scale_fold.py).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx_graphsurgeon as gs

from dfq_onnx.backends import act_precision, input_moments
from dfq_onnx.backends.act_qdq import class_encodings, insert_qdq
from dfq_onnx.backends.qdq import (
    Encoding,
    quantize_weight,
    replace_with_dq,
)
from dfq_onnx.backends.scale_fold import fold_scalar_divisions
from dfq_onnx.core import ir
from dfq_onnx.core.graph_utils import const_values, node_label
from dfq_onnx.core.pass_base import Pass, PassResult, run_passes
from dfq_onnx.core.report import Report
from dfq_onnx.core.state import CompileState
from dfq_onnx.report.activations import annotate


def tensor_bits(state: CompileState) -> dict[str, int]:
    """Activation bits of each quantized tensor: the plan's activation group choice, else its readers'
    group, else its producer's group (backends/act_precision.py)."""
    default = state.options.act_bits or state.target.default_act_bits
    return act_precision.tensor_bits(state.graph, state.spec, state.groups, state.plan, state.act_groups,
                                     default)


def planned_spec(state: CompileState):
    """The spec without the activation groups the plan leaves in float (no Q/DQ, Relu kept)."""
    floats = act_precision.float_tensors(state.plan, state.act_groups)
    return act_precision.without(state.spec, state.graph, floats)


def emitted_graph(state: CompileState, plan, **changes) -> gs.Graph:
    """The graph EmitForms + EmitQDQ write for `plan` on a copy of `state` (left untouched); `changes`
    replace other fields of the copy (e.g. its ranges)."""
    from dfq_onnx.passes.emit_forms import EmitForms

    st = dataclasses.replace(state, graph=ir.copy_graph(state.graph), report=Report(), plan=plan, **changes)
    run_passes([EmitForms(), EmitQDQ()], st)
    return st.graph


def plan_encodings(state: CompileState, spec=None) -> dict[str, Encoding]:
    """Encoding of each quantized tensor of the plan (float groups have none; backends/act_qdq.py)."""
    spec = spec or planned_spec(state)
    return class_encodings(state.graph, spec, state.ranges, state.target, tensor_bits(state))


class EmitQDQ(Pass):
    """Insert Q/DQ nodes for the bit plan (activations, weights, biases, elementwise constants)."""

    name = "EmitQDQ"

    def run(self, state: CompileState) -> PassResult:
        graph, spec = state.graph, planned_spec(state)
        if any(n.op == "QuantizeLinear" for n in graph.nodes):
            return PassResult(False, "already emitted")
        encodings = plan_encodings(state, spec)
        by_dq = insert_qdq(graph, spec, encodings, state.target)
        for name in spec.act_tensors:
            rep, enc, r = spec.encoding_of[name], encodings[name], state.ranges[name]
            state.report.activations.append({
                "tensor": name, "shares_encoding_with": None if rep == name else rep,
                "dtype": enc.dtype, "bits": enc.bits, "scale": float(enc.scale),
                "zero_point": int(enc.zero_point), "range": [r.lo, r.hi], "range_source": r.source})
        weight_bits = {layer: state.plan.bits[g.id][0] for g in state.groups for layer in g.layers}
        nodes = {node_label(n): n for n in graph.nodes}
        done: dict[str, gs.Tensor] = {}   # weight name -> its DequantizeLinear output (shared weights)
        for name, layer in spec.layers.items():
            if layer.role != "weighted" or layer.form:      # form layers: passes/emit_forms.py
                continue
            if layer.weight in done:
                node = nodes[name]
                node.inputs[1] = done[layer.weight]
                self._report_layer(state, layer, weight_bits[name], None, by_dq.get(node.inputs[0].name),
                                   const_values(done[layer.weight].inputs[0].inputs[0]), "shared")
                continue
            self._quantize_weights(state, nodes[name], layer, weight_bits[name], by_dq)
            done[layer.weight] = nodes[name].inputs[1]
        divisions = fold_scalar_divisions(graph)
        graph.cleanup().toposort()
        annotate(state)     # the plan's float activation groups in the report (report/activations.py)
        n_q = sum(1 for n in graph.nodes if n.op == "QuantizeLinear")
        n_dq = sum(1 for n in graph.nodes if n.op == "DequantizeLinear")
        folded = f", {divisions} scalar Div read as a rescale" if divisions else ""
        left = {node_label(n) for n in graph.nodes}     # a Relu kept at bits the target does not absorb at
        absorbed = sum(1 for a in spec.absorbed if a not in left)
        return PassResult(True, f"{n_q} QuantizeLinear, {n_dq} DequantizeLinear, "
                                f"{absorbed} activations absorbed{folded}")

    @staticmethod
    def _quantize_weights(state: CompileState, node: gs.Node, layer, w_bits: int,
                          by_dq: dict[str, Encoding]) -> None:
        target = state.target
        w = const_values(node.inputs[1]).astype(np.float32, copy=False)   # no copy of a large float32 weight
        axis = layer.axis if target.per_channel else None
        x_enc = by_dq.get(node.inputs[0].name)
        bias = const_values(node.inputs[2]).astype(np.float32) if layer.bias else None
        h = input_moments.importance(node, layer, state.input_moments)
        q, scale, qb, bscale = quantize_weight(target, w, bias, None if x_enc is None else x_enc.scale,
                                               w_bits, layer.axis, h)
        int_bias = qb is not None
        enc = Encoding(scale, np.zeros(scale.shape, np.int64), target.weight_dtype(w_bits), w_bits, axis)
        replace_with_dq(state.graph, node, 1, q, enc, layer.weight)
        if int_bias:
            benc = Encoding(bscale, np.zeros(bscale.shape, np.int64), "int32", 32,
                            0 if bscale.ndim else None)
            replace_with_dq(state.graph, node, 2, qb, benc, layer.bias)
        EmitQDQ._report_layer(state, layer, w_bits, scale, x_enc, w,
                              "int32" if int_bias else ("float" if bias is not None else None))

    @staticmethod
    def _report_layer(state, layer, w_bits, scale, x_enc, w, bias_kind) -> None:
        state.report.layers.append({
            "node": layer.node, "op": layer.op, "weight": layer.weight, "weight_bits": w_bits,
            "weight_dtype": state.target.weight_dtype(w_bits), "params": int(np.size(w)),
            "shape": [int(d) for d in np.shape(w)],
            "per_channel_axis": layer.axis if state.target.per_channel else None,
            "weight_scale_min": None if scale is None else float(np.min(scale)),
            "weight_scale_max": None if scale is None else float(np.max(scale)),
            "input_scale": None if x_enc is None else float(x_enc.scale),
            "input_zero_point": None if x_enc is None else int(x_enc.zero_point),
            "act_bits": None if x_enc is None else x_enc.bits, "bias": bias_kind})

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

import numpy as np
import onnx_graphsurgeon as gs

from dfq_onnx.backends import act_precision
from dfq_onnx.backends.qdq import (
    Encoding,
    absorb_activations,
    activation_encoding,
    insert_activation_qdq,
    quantize_weight,
    replace_with_dq,
)
from dfq_onnx.backends.scale_fold import fold_scalar_divisions
from dfq_onnx.core import numerics
from dfq_onnx.core.errors import UnsupportedModelError
from dfq_onnx.core.graph_utils import const_values, node_label
from dfq_onnx.core.pass_base import Pass, PassResult
from dfq_onnx.core.state import CompileState
from dfq_onnx.report.activations import annotate


def _fixed_encoding(state: CompileState, members: list[str], bits: int) -> Encoding | None:
    """The target's fixed output encoding (e.g. Sigmoid on HTP) when a member is such an op's output."""
    tensors = state.graph.tensors()
    for t in members:
        prod = tensors[t].inputs[0] if t in tensors and tensors[t].inputs else None
        fixed = state.target.fixed_encoding(prod.op, bits) if prod is not None else None
        if fixed is not None:
            dtype = state.target.act_dtype(bits)
            return Encoding(np.float32(fixed[0]), np.asarray(fixed[1]), dtype, bits)
    return None


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


class EmitQDQ(Pass):
    """Insert Q/DQ nodes for the bit plan (activations, weights, biases, elementwise constants)."""

    name = "EmitQDQ"

    def run(self, state: CompileState) -> PassResult:
        graph, spec = state.graph, planned_spec(state)
        if any(n.op == "QuantizeLinear" for n in graph.nodes):
            return PassResult(False, "already emitted")
        absorb_activations(graph, spec)
        encodings = self._activation_encodings(state, spec)
        tensors = graph.tensors()
        shared: dict[str, tuple] = {}
        by_dq: dict[str, Encoding] = {}   # dequantized tensor name -> its encoding
        for name in spec.act_tensors:
            rep = spec.encoding_of[name]
            if rep not in shared:
                shared[rep] = encodings[rep].constants(rep)
            dq = insert_activation_qdq(graph, tensors[name], encodings[rep], shared[rep])
            by_dq[dq.name] = encodings[rep]
            r = state.ranges[name]
            state.report.activations.append({
                "tensor": name, "shares_encoding_with": None if rep == name else rep,
                "dtype": encodings[rep].dtype, "bits": encodings[rep].bits,
                "scale": float(encodings[rep].scale), "zero_point": int(encodings[rep].zero_point),
                "range": [r.lo, r.hi], "range_source": r.source})
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
        for node_name, const_name in spec.const_inputs:
            self._quantize_constant_input(state, nodes[node_name], const_name)
        divisions = fold_scalar_divisions(graph)
        graph.cleanup().toposort()
        annotate(state)     # the plan's float activation groups in the report (report/activations.py)
        n_q = sum(1 for n in graph.nodes if n.op == "QuantizeLinear")
        n_dq = sum(1 for n in graph.nodes if n.op == "DequantizeLinear")
        folded = f", {divisions} scalar Div read as a rescale" if divisions else ""
        return PassResult(True, f"{n_q} QuantizeLinear, {n_dq} DequantizeLinear, "
                                f"{len(spec.absorbed)} activations absorbed{folded}")

    @staticmethod
    def _activation_encodings(state: CompileState, spec=None) -> dict[str, Encoding]:
        """Encoding of each quantized tensor of the plan (float groups have none)."""
        spec, bits = spec or planned_spec(state), tensor_bits(state)
        classes: dict[str, list[str]] = {}
        for t in spec.act_tensors:
            classes.setdefault(spec.encoding_of[t], []).append(t)
        out = {}
        for rep, members in classes.items():
            missing = [t for t in members if t not in state.ranges]
            if missing:
                raise UnsupportedModelError(f"no activation range for tensor '{missing[0]}'")
            lo = min(state.ranges[t].lo for t in members)
            hi = max(state.ranges[t].hi for t in members)
            b = max(bits[t] for t in members)
            out[rep] = (_fixed_encoding(state, members, b)
                        or activation_encoding(state.target, lo, hi, b))
        for t in spec.act_tensors:
            out[t] = out[spec.encoding_of[t]]
        return out

    @staticmethod
    def _quantize_weights(state: CompileState, node: gs.Node, layer, w_bits: int,
                          by_dq: dict[str, Encoding]) -> None:
        target = state.target
        w = const_values(node.inputs[1]).astype(np.float32, copy=False)   # no copy of a large float32 weight
        axis = layer.axis if target.per_channel else None
        x_enc = by_dq.get(node.inputs[0].name)
        bias = const_values(node.inputs[2]).astype(np.float32) if layer.bias else None
        q, scale, qb, bscale = quantize_weight(target, w, bias, None if x_enc is None else x_enc.scale,
                                               w_bits, layer.axis)
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

    @staticmethod
    def _quantize_constant_input(state: CompileState, node: gs.Node, const_name: str) -> None:
        for i, t in enumerate(node.inputs):
            if t.name == const_name and isinstance(t, gs.Constant):
                values = const_values(t).astype(np.float32)
                bits = state.target.default_act_bits
                enc = activation_encoding(state.target, float(values.min()), float(values.max()), bits)
                q = numerics.quantize(values, enc.scale, enc.zero_point, bits, enc.dtype.startswith("int"))
                replace_with_dq(state.graph, node, i, q, enc, f"{node_label(node)}_{const_name}")

"""Settle the form options: each MatMul laid out static with a [forms] alternative (passes/quant_groups.py,
`form_option`) stays static where the plan quantizes its input, and takes its form where the plan leaves
its input float (the activation decision found that encoding an outlier):

    static     x ──Q──DQ──► MatMul(W8) ──Q──DQ──►          ORT: QLinearMatMul, integer neighbours
    form       x ─────────► DynamicQuantizeMatMul ──►      x quantized per call, its own range

Decided per quantizer group (layers sharing an input encoding or a weight decide together): the group
takes its form when every weighted layer of it is a form option and reads a float input; otherwise its
layers stay static (a float input then runs weight-only, as for any weighted layer). The probe scored
the form as float activations with W8 weights: its per-call 8-bit quantization is left out, so the
scoring leans towards the form. Runs after the plan (ChooseActivationPrecision), before the passes that
read `LayerSpec.form` (bias correction, Emit).
"""

from __future__ import annotations

import dataclasses

from dfq_onnx.backends import forms
from dfq_onnx.backends.act_precision import float_tensors
from dfq_onnx.core.graph_utils import node_label
from dfq_onnx.core.pass_base import Pass, PassResult
from dfq_onnx.core.state import BitPlan, CompileState


def _takes_form(state: CompileState, group, floats: set[str], nodes: dict) -> bool:
    layers = [state.spec.layers[n] for n in group.layers]
    quantized = set(state.spec.act_tensors) - floats
    return bool(layers) and all(layer.form_option for layer in layers) and \
        all(nodes[layer.node].inputs[0].name not in quantized for layer in layers)


class SettleForms(Pass):
    """Analysis: form options whose input the plan leaves float take their [forms] candidate; the others
    are static layers."""

    name = "SettleForms"

    def run(self, state: CompileState) -> PassResult:
        if not any(layer.form_option for layer in state.spec.layers.values()):
            return PassResult(False, "no form options")
        floats = float_tensors(state.plan, state.act_groups)
        nodes = {node_label(n): n for n in state.graph.nodes}
        tensors = state.graph.tensors()
        layers, bits = dict(state.spec.layers), dict(state.plan.bits)
        formed, static = [], []
        for g in state.groups:
            take = _takes_form(state, g, floats, nodes)
            for name in g.layers:
                if layers[name].form_option:
                    layers[name] = dataclasses.replace(layers[name], form_option=False, form=take)
                    (formed if take else static).append(name)
            if take:
                w, a = bits[g.id][:2]
                shapes = {n: tensors[layers[n].weight].shape for n in g.layers}
                bits[g.id] = max((forms.uniform_fit(state.target, layers[n].op, shapes[n], w, a)
                                  for n in g.layers), key=lambda c: c[0])
        state.spec = dataclasses.replace(state.spec, layers=layers)
        state.plan = BitPlan(bits, acts=dict(state.plan.acts))
        state.report.notes["form_options"] = {"form": formed, "static": static}
        return PassResult(True, f"{len(static)} MatMuls static, {len(formed)} in their form")

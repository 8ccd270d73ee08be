"""Settle the form options: each MatMul laid out static with a [forms] alternative (passes/quant_groups.py,
`form_option`) stays static where the plan quantizes its input, and takes its form where the plan leaves
its input float (the activation decision found that encoding an outlier, or could not clear it within the
form options' shared budget, sensitivity/act_scoring.py):

    static     x ──Q──DQ──► MatMul(W8) ──Q──DQ──►          ORT: QLinearMatMul, integer neighbours
    form       x ─────────► DynamicQuantizeMatMul ──►      x quantized per call, its own range

Decided per quantizer group (layers sharing an input encoding or a weight decide together): the group
takes its form when every weighted layer of it is a form option and reads a float input. When some do, the
spec is built again with those in their form (FindQuantGroups' rules: the elementwise and attention ops
around a form stay float unless a static layer reads them, as without options), and the plan is carried
over by tensor: the chosen precisions stay, but a float that only handed a MatMul its form
(`BitPlan.form_inputs`: not an outlier, outside the shared budget) is not carried to its other readers.
The probe scored the form as float activations with W8 weights: its per-call 8-bit quantization is left
out. When only some options stay static, the whole model is timed again against every option in its form
(passes/form_options.py: a partial static region can pay less than the whole); static stays only where
it is not slower. Runs after the plan (ChooseActivationPrecision), before the passes that read
`LayerSpec.form` (bias correction, Emit).
"""

from __future__ import annotations

import dataclasses

from dfq_onnx.passes.form_options import options_of, respec, static_pays
from dfq_onnx.passes.quant_groups import build_groups

from dfq_onnx.backends import forms
from dfq_onnx.backends.act_precision import float_tensors
from dfq_onnx.core.graph_utils import node_label
from dfq_onnx.core.pass_base import Pass, PassResult
from dfq_onnx.core.report import Report
from dfq_onnx.core.state import BitPlan, CompileState


def _takes_form(state: CompileState, group, floats: set[str], nodes: dict) -> bool:
    layers = [state.spec.layers[n] for n in group.layers]
    quantized = set(state.spec.act_tensors) - floats
    return bool(layers) and all(layer.form_option for layer in layers) and \
        all(nodes[layer.node].inputs[0].name not in quantized for layer in layers)


def _respec(state: CompileState, formed: list[str]) -> None:
    """Spec, groups and plan again with `formed` in their form (module docstring)."""
    old_bits = {layer: state.plan.bits[g.id] for g in state.groups for layer in g.ops}
    old_acts = {t: state.plan.acts[ag.id] for ag in state.act_groups if ag.id in state.plan.acts
                and ag.id not in state.plan.form_inputs for t in ag.tensors}
    respec(state, formed)
    spec = dataclasses.replace(state.spec, layers={k: dataclasses.replace(v, form_option=False)
                                                   for k, v in state.spec.layers.items()})
    state.spec, state.groups = spec, build_groups(state.graph, spec)
    shapes, bits = state.graph.tensors(), {}
    for g in state.groups:
        w, a = old_bits[g.ops[0]][:2]
        layers = [spec.layers[n] for n in g.layers]
        if layers and all(layer.form for layer in layers):
            bits[g.id] = max((forms.uniform_fit(state.target, layer.op, shapes[layer.weight].shape, w, a)
                              for layer in layers), key=lambda c: c[0])
        else:
            bits[g.id] = (w, a)
    acts = {ag.id: old_acts[t] for ag in state.act_groups for t in ag.tensors if t in old_acts}
    state.plan = BitPlan(bits, acts=acts)


class SettleForms(Pass):
    """Analysis: form options whose input the plan leaves float take their [forms] candidate; the others
    are static layers."""

    name = "SettleForms"

    def run(self, state: CompileState) -> PassResult:
        options = options_of(state)
        if not options:
            return PassResult(False, "no form options")
        floats = float_tensors(state.plan, state.act_groups)
        nodes = {node_label(n): n for n in state.graph.nodes}
        formed = [n for g in state.groups if _takes_form(state, g, floats, nodes) for n in g.layers]
        static = [n for n in options if n not in formed]
        note = {"form": formed, "static": static}
        if formed and static:        # a partial static region: timed again against every option's form
            trial, every = (dataclasses.replace(state, report=Report()) for _ in range(2))
            _respec(trial, formed)
            _respec(every, options)
            note["latency"] = static_pays(state, trial, every, static)
            if not note["latency"]["static_pays"]:
                formed, static = options, []
        if formed:
            _respec(state, formed)
        else:
            layers = {k: dataclasses.replace(v, form_option=False) for k, v in state.spec.layers.items()}
            state.spec = dataclasses.replace(state.spec, layers=layers)
        state.report.notes["form_options"] = {**note, "form": formed, "static": static}
        return PassResult(True, f"{len(static)} MatMuls static, {len(formed)} in their form")

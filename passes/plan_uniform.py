"""Uniform bit plan: every quantizer group gets the same (weight bits, activation bits) pair."""

from __future__ import annotations

from dfq_onnx.pass_base import Pass, PassResult
from dfq_onnx.state import BitPlan, CompileState


class UniformPlan(Pass):
    """Analysis: the uniform special case of a BitPlan (options' bits, else the target's defaults)."""

    name = "UniformPlan"

    def run(self, state: CompileState) -> PassResult:
        opts, target = state.options, state.target
        w = opts.weight_bits or target.default_weight_bits
        a = opts.act_bits or target.default_act_bits
        target.check_pair(w, a)
        state.plan = BitPlan.uniform(state.groups, w, a)
        state.report.groups = [{"group": g.id, "layers": list(g.layers), "ops": list(g.ops),
                                "activations": list(g.activations), "params": g.params,
                                "weight_bits": w, "act_bits": a} for g in state.groups]
        return PassResult(False, f"W{w}A{a} for {len(state.groups)} groups")

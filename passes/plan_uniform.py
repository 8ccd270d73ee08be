"""Uniform bit plan: every quantizer group gets the same (weight bits, activation bits) pair; a group of
form layers (the target's [forms]) gets its op's first form candidate with those weight bits."""

from __future__ import annotations

from dfq_onnx.backends import forms
from dfq_onnx.core.errors import TargetError
from dfq_onnx.core.pass_base import Pass, PassResult
from dfq_onnx.core.state import FLOAT_BITS, BitPlan, CompileState


class UniformPlan(Pass):
    """Analysis: the uniform special case of a BitPlan (options' bits, else the target's defaults)."""

    name = "UniformPlan"

    @staticmethod
    def _bits(state: CompileState) -> tuple[int, int]:
        opts, target = state.options, state.target
        return opts.weight_bits or target.default_weight_bits, opts.act_bits or target.default_act_bits

    def check(self, state: CompileState) -> None:
        """The pair is legal on the target and for every op of every group (float activations: the
        target offers them and the weight bits have a type)."""
        target = state.target
        w, a = self._bits(state)
        if a == FLOAT_BITS:
            if FLOAT_BITS not in target.act_choices:
                legal = list(target.act_choices) or [target.default_act_bits]
                raise TargetError(f"--act-bits 32: target '{target.name}' has no float activations "
                                  f"(activation choices: {legal})")
            target.weight_dtype(w)
            return
        target.check_pair(w, a)
        for g in state.groups:   # per-op narrowing ([candidates.ops])
            if self._form(state, g, w, a) is not None:
                continue
            ops = [state.spec.layers[n].op for n in g.layers]
            if (w, a) not in target.pairs_for(ops):
                op = next(o for o in ops if (w, a) not in target.pairs_for([o]))
                node = next(n for n in g.layers if state.spec.layers[n].op == op)
                raise TargetError(f"W{w}A{a} is not legal for {op} on target '{target.name}' (node '{node}'; "
                                  f"legal: {', '.join(f'W{x}A{y}' for x, y in target.pairs_for([op]))})")

    @staticmethod
    def _form(state: CompileState, group, w: int, a: int) -> tuple | None:
        """The form candidate of a group of form layers (shared weights: the widest of their ops')."""
        layers = [state.spec.layers[n] for n in group.layers]
        if not layers or not all(layer.form for layer in layers):
            return None
        shapes = state.graph.tensors()
        cands = [forms.uniform_fit(state.target, layer.op, shapes[layer.weight].shape, w, a)
                 for layer in layers]
        if any(c is None for c in cands):
            op = layers[[c is None for c in cands].index(True)].op
            raise TargetError(f"no form of {op} on target '{state.target.name}' has {w} or more weight bits "
                              f"(node '{group.layers[0]}')")
        return max(cands, key=lambda c: c[0])

    def run(self, state: CompileState) -> PassResult:
        self.check(state)
        w, a = self._bits(state)
        plan = BitPlan.uniform(state.groups, w, a).bits
        forms = {g.id: self._form(state, g, w, a) for g in state.groups}
        state.plan = BitPlan({g: forms[g] or bits for g, bits in plan.items()})
        if a == FLOAT_BITS:   # every activation group float: weight-only quantization
            state.plan = BitPlan(state.plan.bits, acts={ag.id: a for ag in state.act_groups})
        state.report.groups = [{"group": g.id, "layers": list(g.layers), "ops": list(g.ops),
                                "activations": list(g.activations), "params": g.params,
                                "weight_bits": w, "act_bits": a} for g in state.groups]
        return PassResult(False, f"W{w}A{a} for {len(state.groups)} groups")

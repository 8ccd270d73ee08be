"""Score the dynamic int8 form's inputs at the model output: dynamic per tensor vs the exact form.

The default plan writes every MatMul of a target's [forms] in its first W8 form, the dynamic one
(`W8A8-dyn`: DynamicQuantizeLinear puts the whole input tensor on one run-time grid). Its more exact
twin with the same weight bits (`W8A32-b128` on ort-cpu: MatMulNBits at accuracy level 4, int8
activations per block of 128 along K) bounds an outlier channel's damage to its block. The probe has a
form switch per decided group (sensitivity/form_switch.py: slot 0 FP32, then dyn, exact); with R the
loss against the probe's all-FP32 outputs (`Evaluator.relative`):

    gate     L_x  = R(every group exact)      what the exact form costs: the W8 weights' damage
             L_d  = R(every group dynamic)    the default plan's
    singles  D_u  = R(unit u dynamic, every other group FP32)           one per unit (broken plans only)
    joint    J_k  = R(the k worst units exact, every other group dynamic)

A unit is the set of groups that read one input tensor (q / k / v share theirs: one grid, one decision).
The default plan is *broken* when L_d > BROKEN x L_x (act_scoring's factor: 16x in power, two bits' worth
of SQNR beyond what the weights cost); only then are the singles measured (each from its unit's segment,
on the cached FP32 prefix) and the units moved to the exact form worst single first: the shortest prefix
with J_k <= BROKEN x L_x, found by bisection on k (J_k falls as k grows; the whole plan is measured at
each step). A plan within the bound is left as it is: 2 evaluations, no single.
This module only measures; passes/choose_forms.py decides.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from dfq_onnx.sensitivity.act_scoring import BROKEN, broken, joint_bound
from dfq_onnx.sensitivity.evaluator import Evaluator

log = logging.getLogger(__name__)


@dataclass
class FormTerms:
    """What the form decision measured (module docstring)."""

    units: dict[str, tuple[str, ...]]                 # input tensor -> the groups reading it
    exact_loss: float = 0.0                           # L_x
    dynamic_loss: float = 0.0                         # L_d
    singles: dict[str, float] = field(default_factory=dict)        # D_u (broken plans only)
    joint: list[tuple[int, float]] = field(default_factory=list)   # (k, J_k) measured
    chosen: tuple[str, ...] = ()                      # units moved to the exact form
    evaluations: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {"units": {k: list(v) for k, v in self.units.items()}, "exact_loss": self.exact_loss,
                "dynamic_loss": self.dynamic_loss, "factor": BROKEN, "singles": dict(self.singles),
                "joint": [list(j) for j in self.joint], "chosen": list(self.chosen),
                "evaluations": self.evaluations, "seconds": round(self.seconds, 3)}

    @classmethod
    def from_dict(cls, d: dict) -> "FormTerms":
        return cls({k: tuple(v) for k, v in d["units"].items()}, float(d["exact_loss"]),
                   float(d["dynamic_loss"]), {k: float(v) for k, v in d["singles"].items()},
                   [(int(k), float(v)) for k, v in d["joint"]], tuple(d["chosen"]), int(d["evaluations"]),
                   float(d["seconds"]))


def _config(units: dict, exact_units, dyn, exact) -> dict:
    return {g: (exact if u in exact_units else dyn)[g] for u, gs in units.items() for g in gs}


def score_forms(ev: Evaluator, units: dict[str, tuple[str, ...]], dyn: dict[str, tuple],
                exact: dict[str, tuple]) -> FormTerms:
    """Gate, singles and the joint bisection of the module docstring on the form probe behind `ev`;
    `units` in graph order, `dyn` / `exact` each group's two candidates."""
    start, e0 = time.perf_counter(), ev.evaluations
    names = list(units)
    terms = FormTerms(dict(units))
    terms.exact_loss = float(ev.relative(_config(units, set(names), dyn, exact))[0])
    terms.dynamic_loss = float(ev.relative(_config(units, set(), dyn, exact))[0])
    log.info("forms gate: dynamic %.4g, exact %.4g (%d evaluations, %.0f s)", terms.dynamic_loss,
             terms.exact_loss, ev.evaluations - e0, time.perf_counter() - start)
    if broken(terms.dynamic_loss, terms.exact_loss):
        for u in names:
            terms.singles[u] = float(ev.relative({g: dyn[g] for g in units[u]})[0])
        log.info("forms singles: %d units (%.0f s)", len(names), time.perf_counter() - start)
        order = sorted(names, key=lambda u: (-terms.singles[u], names.index(u)))
        bound = joint_bound(terms.exact_loss)
        lo, hi = 0, len(order)            # J_0 = L_d > bound; J_len = L_x <= bound
        while hi - lo > 1:
            k = (lo + hi) // 2
            j = float(ev.relative(_config(units, set(order[:k]), dyn, exact))[0])
            terms.joint.append((k, j))
            lo, hi = (lo, k) if j <= bound else (k, hi)
        terms.chosen = tuple(sorted(order[:hi], key=names.index))
    terms.evaluations, terms.seconds = ev.evaluations - e0, time.perf_counter() - start
    return terms

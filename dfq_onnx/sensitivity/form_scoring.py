"""Score the dynamic int8 form's inputs at the model output: dynamic per tensor vs the exact form.

The default plan writes every MatMul of a target's [forms] in its first W8 form, the dynamic one
(`W8A8-dyn`: DynamicQuantizeLinear puts the whole input tensor on one run-time grid). Its more exact
twin with the same weight bits (`W8A32-b128` on ort-cpu: MatMulNBits at accuracy level 4, int8
activations per block of 128 along K) bounds an outlier channel's damage to its block. The probe has a
form switch per decided group (sensitivity/form_switch.py: slot 0 FP32, then dyn, exact); with R the
loss against the probe's all-FP32 outputs (`Evaluator.relative`):

    gate     L_x  = R(every group exact)      what the exact form costs: the W8 weights' damage
             L_d  = R(every group dynamic)    the default plan's
    screen   D'_u = R'(unit u dynamic, every other group FP32)    every unit, every SINGLE_STRIDE-th row
    singles  D_u  = R(unit u dynamic, every other group FP32)     the contested units, every row
    joint    J_k  = R(the first k units of the order exact, every other group dynamic)

A unit is the set of groups that read one input tensor (q / k / v share theirs: one grid, one decision).
The default plan is *broken* when L_d > BROKEN x L_x (act_scoring's factor: 16x in power, two bits' worth
of SQNR beyond what the weights cost); only then is anything more measured, and the units are moved to
the exact form worst first: the shortest prefix of the order with J_k <= BROKEN x L_x. A plan within the
bound is left as it is: 2 evaluations, nothing else run.

The order (each single from its unit's segment, on the cached FP32 prefix):

1. Screen: D'_u on every SINGLE_STRIDE-th scoring row (R': the same loss on those rows, against their own
   FP32 reference and base; the probe, its sessions and segment cache are shared under other keys), a
   quarter of a single's cost. Its predicted prefix: the least k whose remainder L_d x (sum of the
   singles after the first k / sum of all) is within the bound.
2. Singles on every row for the units whose D'_u is within CONTESTED (4x) of the predicted prefix's last:
   a quarter of the rows (and, the dynamic grid being one per call, fewer rows per grid) can swap units
   of similar damage (the test model's two GELU outputs: 0.013 / 0.010 on every row, 0.008 / 0.013 on
   a quarter), so the units the decision turns on are ranked as before; the rest keep the screen's
   order after them (by then the plan is within the bound on nearly every model).
3. The prefix search, on the whole plan and every row (the bound holds whatever the order): first at the
   prefix the order's singles predict, then galloping away from it until J brackets the bound, then
   bisection (J_k falls as k grows): 2 evaluations where the prediction is right, at most about
   2 log2 U otherwise.

all-mpnet-base-v2 (U = 48): 3 + 48 singles + 6 bisection steps before, 3 + 48 on a quarter of the rows
+ the contested singles + 2 steps now (BENCHMARKS.md, session 20).
This module only measures; passes/choose_forms.py decides.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from typing import Callable

from dfq_onnx.backends.memory import release
from dfq_onnx.sensitivity.act_scoring import BROKEN, broken, joint_bound
from dfq_onnx.sensitivity.evaluator import Evaluator

log = logging.getLogger(__name__)
SINGLE_STRIDE = 4      # the screen's rows: every 4th scoring row (module docstring)
CONTESTED = 4.0        # singles measured on every row: screened within this factor of the predicted last


@dataclass
class FormTerms:
    """What the form decision measured (module docstring)."""

    units: dict[str, tuple[str, ...]]                 # input tensor -> the groups reading it
    exact_loss: float = 0.0                           # L_x
    dynamic_loss: float = 0.0                         # L_d
    singles: dict[str, float] = field(default_factory=dict)        # D_u (broken plans: the contested)
    screen: dict[str, float] = field(default_factory=dict)         # D'_u (broken plans: every unit)
    joint: list[tuple[int, float]] = field(default_factory=list)   # (k, J_k) measured
    chosen: tuple[str, ...] = ()                      # units moved to the exact form
    guess: int = 0                                    # the singles' predicted prefix length
    evaluations: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {"units": {k: list(v) for k, v in self.units.items()}, "exact_loss": self.exact_loss,
                "dynamic_loss": self.dynamic_loss, "factor": BROKEN, "singles": dict(self.singles),
                "screen": dict(self.screen),
                "joint": [list(j) for j in self.joint], "guess": self.guess, "chosen": list(self.chosen),
                "evaluations": self.evaluations, "seconds": round(self.seconds, 3)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> "FormTerms":
        return cls.from_dict(json.loads(text))

    @classmethod
    def from_dict(cls, d: dict) -> "FormTerms":
        return cls({k: tuple(v) for k, v in d["units"].items()}, float(d["exact_loss"]),
                   float(d["dynamic_loss"]), {k: float(v) for k, v in d["singles"].items()},
                   {k: float(v) for k, v in d["screen"].items()},
                   [(int(k), float(v)) for k, v in d["joint"]], tuple(d["chosen"]), int(d["guess"]),
                   int(d["evaluations"]), float(d["seconds"]))


def _config(units: dict, exact_units, dyn, exact) -> dict:
    return {g: (exact if u in exact_units else dyn)[g] for u, gs in units.items() for g in gs}


class RowKeys:
    """A probe whose segment-cache keys are its own (`tag`, key): an evaluator on other rows of the same
    samples shares the probe, its sessions and cache, not the cached rows of `ev`'s batches."""

    def __init__(self, probe, tag: str):
        self._probe, self._tag, self.probe = probe, tag, probe.probe

    def run_batch(self, config, feeds, key=None):
        return self._probe.run_batch(config, feeds, None if key is None else (self._tag, key))


def predicted_prefix(order: list[str], singles: dict[str, float], dynamic_loss: float, bound: float) -> int:
    """The least k whose remainder L_d x (sum of the singles after the first k of `order` / sum of all) is
    within `bound` (module docstring; at least 1: J_0 = L_d is above it)."""
    total = sum(max(singles[u], 0.0) for u in order)
    rest = total
    for k, u in enumerate(order, 1):
        rest -= max(singles[u], 0.0)
        if total <= 0 or dynamic_loss * rest / total <= bound:
            return k
    return len(order)


def shortest_prefix(fits: Callable[[int], bool], n: int, guess: int) -> int:
    """The least k in [1, n] with fits(k), given not fits(0) and fits(n) and fits monotone: first at
    `guess`, then galloping away from it (steps 1, 2, 4, ...) until both ends have moved, then bisection."""
    lo, hi, k, step, moved = 0, n, guess, 1, set()
    while hi - lo > 1:
        k = min(max(k, lo + 1), hi - 1)
        ok = fits(k)
        lo, hi = (lo, k) if ok else (k, hi)
        moved.add(ok)
        k = (lo + hi) // 2 if len(moved) == 2 else (hi - step if ok else lo + step)
        step *= 2
    return hi


def score_forms(ev: Evaluator, units: dict[str, tuple[str, ...]], dyn: dict[str, tuple],
                exact: dict[str, tuple], rows: Callable[[], Evaluator] | None = None) -> FormTerms:
    """Gate, singles and the prefix search of the module docstring on the form probe behind `ev`; `units`
    in graph order, `dyn` / `exact` each group's two candidates, `rows()` the screen's evaluator (on
    every SINGLE_STRIDE-th row; made only on a broken plan; None: `ev`)."""
    start, e0 = time.perf_counter(), ev.evaluations
    names = list(units)
    terms = FormTerms(dict(units))
    ev.relative({})       # the probe's own FP32 outputs (every term's base; the segment cache filled)
    release()             # each whole-plan run's freed heap before the next (glibc keeps it otherwise)
    terms.exact_loss = float(ev.relative(_config(units, set(names), dyn, exact))[0])
    release()
    terms.dynamic_loss = float(ev.relative(_config(units, set(), dyn, exact))[0])
    log.info("forms gate: dynamic %.4g, exact %.4g (%d evaluations, %.0f s)", terms.dynamic_loss,
             terms.exact_loss, ev.evaluations - e0, time.perf_counter() - start)
    if broken(terms.dynamic_loss, terms.exact_loss):
        bound = joint_bound(terms.exact_loss)
        sub = rows() if rows is not None else ev
        s0 = sub.evaluations
        for u in names:
            terms.screen[u] = float(sub.relative({g: dyn[g] for g in units[u]})[0])
        extra = sub.evaluations - s0 if sub is not ev else 0      # the screen's own evaluator's
        order = sorted(names, key=lambda u: (-terms.screen[u], names.index(u)))
        k = predicted_prefix(order, terms.screen, terms.dynamic_loss, bound)
        floor = max(terms.screen[order[k - 1]], 0.0) / CONTESTED
        for u in order:
            if terms.screen[u] >= floor:
                terms.singles[u] = float(ev.relative({g: dyn[g] for g in units[u]})[0])
        log.info("forms singles: %d units screened, %d measured (%.0f s)", len(names), len(terms.singles),
                 time.perf_counter() - start)
        top = sorted(terms.singles, key=lambda u: (-terms.singles[u], names.index(u)))
        order = top + [u for u in order if u not in terms.singles]
        scale = sum(terms.singles.values()) / max(sum(terms.screen[u] for u in top), 1e-30)
        merged = {u: terms.singles.get(u, scale * terms.screen[u]) for u in names}
        terms.guess = predicted_prefix(order, merged, terms.dynamic_loss, bound)
        release()         # the singles' freed heap before the whole-plan steps

        def fits(k: int) -> bool:
            j = float(ev.relative(_config(units, set(order[:k]), dyn, exact))[0])
            terms.joint.append((k, j))
            return j <= bound
        k = shortest_prefix(fits, len(order), terms.guess)     # J_0 = L_d > bound; J_len = L_x <= bound
        terms.chosen = tuple(sorted(order[:k], key=names.index))
        e0 -= extra
    terms.evaluations, terms.seconds = ev.evaluations - e0, time.perf_counter() - start
    return terms

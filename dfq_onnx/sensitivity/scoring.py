"""Score how much each quantizer group's weight bit-width hurts the model output (the ILP's input).

For every group with weights and every candidate c = (w, a) -- w from `weight_bits` where the target
allows (w, a), a the activation bits -- configurations are run on ONE probe model in ONE session
(`dfq_onnx.sensitivity.probe`), each costing one ORT forward pass of the scoring batch, and the terms of
`dfq_onnx.sensitivity.table` are formed against the cached FP32 outputs:

    singles    Omega_i(c)   = D(i at c)                                             G*K evaluations
    incontext  I_i(c)       = L(others at base, i at c) - L(all at base)            G*(K-1) + 1
    pairs      C_ij(c, c')  = D(i at c, j at c') - D(i at c) - D(j at c')           P*K_low^2
               for groups within `hops` and c, c' below the base (e.g. {2,4} x {2,4})

plus one FP32 forward pass and one reference evaluation. With `extrapolate` (mixed-precision compiles)
the singles run at three widths per group at most -- the lowest, the anchor, the base, each only while
the previous one is not negligible -- and the others are interpolated from the weights' noise power
(`dfq_onnx.sensitivity.widths`): at most 3 G + 1 evaluations whatever K.
L is the loss vs the FP32 model, D the same metric vs the probe's outputs with every weight FP32
(activations quantized): the damage the weights add (`Evaluator.relative`). D has no cross term with
the activation noise, which makes small L-differences noisy and often negative; singles are then made
monotone in the bits (`monotone`).

Hops: quantized nodes (weighted and elementwise) are adjacent when data flows from one to the other
through non-quantized nodes only (Relu, Pad, MaxPool, ...); two groups are within k hops when some
node of one reaches some node of the other in at most k such edges (undirected). In a ResNet block
conv1 -> conv2 is 1 hop and conv2 -> next block's conv1 is 2 (via the Add, in the conv1 group); with
k = 2 ResNet-56 has 128 pairs (counting through skip connections for free would give 1189).

Shrinkage: each term T is also formed on the even and the odd samples (T_a, T_b, same configurations,
so noise common to both cancels in differences). sigma = |T_a - T_b| / 2 estimates the standard error
of T, and T' = sign(T) max(|T| - lambda sigma, 0) with lambda = `shrink` (0 disables): terms the
samples cannot tell from 0 become 0 and do not steer the allocator.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from dfq_onnx.core import candidates, numerics
from dfq_onnx.core.errors import UsageError
from dfq_onnx.core.graph_utils import node_label
from dfq_onnx.sensitivity.evaluator import Evaluator
from dfq_onnx.sensitivity.table import METRICS, SensitivityTable
from dfq_onnx.sensitivity.widths import Widths

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SensitivityOptions:
    weight_bits: tuple[int, ...] = (2, 4, 8)
    base_bits: int = 8
    hops: int = 2                     # 0: no pairs
    pairs: bool = True
    incontext: bool = True            # False: skip the in-context phase (the allocator reads singles/pairs)
    pair_bits: tuple[int, ...] | None = None   # candidates of the pair terms (None: all below base)
    metric: str = "auto"              # "auto" | "kl" | "ce" | "mse" | "sqnr"
    batch: int | None = None          # samples per ORT run (None: the model's static batch, else
                                      # --calib-batch, else rows_per_chunk of its activation footprint)
    samples: int | None = None        # score on the first n samples (None: all)
    quantize_activations: bool = True
    bias_correction: bool = False     # each candidate's weights with its analytic bias correction
    shrink: float = 1.0
    segmented: bool = True            # run configurations from the first changed segment (segments.py)
    dither: int = 1                   # > 1: rows at that many activation-grid offsets (dither.py)
    extrapolate: bool = False         # score <= 3 widths per group, interpolate the others (widths.py)
    budget_bits: float | None = None  # with extrapolate: an average-bits budget; the widest width below
                                      # it is measured too (widths.budget_width)
    use_cache: bool = True
    cache_dir: str | None = None
    progress: bool = True

    def __post_init__(self):
        bits = tuple(sorted(int(b) for b in self.weight_bits))
        object.__setattr__(self, "weight_bits", bits)
        if not bits or len(set(bits)) != len(bits) or not set(bits) <= set(numerics.SUPPORTED_BITS):
            raise UsageError(f"sensitivity weight bits {bits}: expected distinct values from "
                             f"{numerics.SUPPORTED_BITS}")
        if self.base_bits not in bits:
            raise UsageError(f"sensitivity base bits {self.base_bits} must be one of the weight bits {bits}")
        if min(self.batch or 1, self.dither) < 1 or self.hops < 0 or self.shrink < 0:
            raise UsageError(f"sensitivity: batch ({self.batch}) and dither ({self.dither}) must be "
                             f"positive, hops ({self.hops}) and shrink ({self.shrink}) non-negative")
        if self.pair_bits is not None:
            pair = tuple(sorted(int(b) for b in self.pair_bits))
            object.__setattr__(self, "pair_bits", pair)
            if not set(pair) <= set(bits) or any(b >= self.base_bits for b in pair):
                raise UsageError(f"sensitivity pair bits {pair} must be weight bits below the base "
                                 f"{self.base_bits}")
        if self.samples is not None and self.samples < 2:
            raise UsageError(f"sensitivity samples {self.samples}: need at least 2 (two half-batches)")
        if self.metric not in METRICS:
            raise UsageError(f"sensitivity metric '{self.metric}': expected one of {', '.join(METRICS)}")
        if self.extrapolate and self.incontext:
            raise UsageError("sensitivity: extrapolated widths score singles only (set incontext=False)")


def candidate_bits(options: SensitivityOptions, target, act_bits: int) -> tuple[int, ...]:
    """The weight bits the target allows with `act_bits` (the others are logged and skipped)."""
    legal = tuple(b for b in options.weight_bits if (b, act_bits) in target.pairs)
    dropped = [b for b in options.weight_bits if b not in legal]
    if dropped:
        log.info("target '%s' has no %s: not scored", target.name,
                 ", ".join(f"W{b}A{act_bits}" for b in dropped))
    if options.base_bits not in legal:
        raise UsageError(f"base W{options.base_bits}A{act_bits} is not legal on target '{target.name}'")
    return legal


def near_pairs(graph, groups, hops: int) -> list[tuple[str, str]]:
    """Pairs (in group order) of weighted groups within `hops` (see the module docstring)."""
    group_of = {op: g.id for g in groups for op in g.ops}
    adj: dict[str, set[str]] = {g.id: set() for g in groups}
    for node in graph.nodes:
        src = group_of.get(node_label(node))
        if src is None:
            continue
        stack, seen = [c for t in node.outputs for c in t.outputs], set()
        while stack:
            c = stack.pop()
            if id(c) in seen:
                continue
            seen.add(id(c))
            dst = group_of.get(node_label(c))
            if dst is None:
                stack.extend(cc for t in c.outputs for cc in t.outputs)
            elif dst != src:
                adj[src].add(dst)
                adj[dst].add(src)
    order = {g.id: i for i, g in enumerate(groups) if g.layers}
    pairs = set()
    for g in order:
        seen, front = {g}, {g}
        for _ in range(hops):
            front = {h for f in front for h in adj[f]} - seen
            seen |= front
        pairs |= {(g, h) for h in seen if h in order and order[h] > order[g]}
    return sorted(pairs, key=lambda p: (order[p[0]], order[p[1]]))


def _values(groups, bits, base, low, forms: dict | None) -> dict[str, tuple]:
    """Per group: (configuration values, base value, pair values). Static groups: weight bits; a form
    group (`forms[g]` = (candidates, base candidate)): its candidates, pairs at fewer bits than base."""
    forms = forms or {}
    out = {}
    for g in groups:
        if g in forms:
            cands, fb = forms[g]
            out[g] = (tuple(cands), fb, tuple(c for c in cands if c[0] < fb[0]))
        else:
            out[g] = (tuple(bits), base, tuple(low))
    return out


def _plan(groups: list[str], bits, base: int, pairs, low, incontext: bool = True,
          forms: dict | None = None) -> dict[str, list[dict]]:
    """The configurations of each phase (group -> weight bits or form candidate; absent = FP32)."""
    v = _values(groups, bits, base, low, forms)
    all_base = {g: v[g][1] for g in groups}
    return {"singles": [{}] + [{g: b} for g in groups for b in v[g][0]],
            "incontext": [all_base] + ([{**all_base, g: b} for g in groups for b in v[g][0] if b != v[g][1]]
                                       if incontext else []),
            "pairs": [{g: c, h: d} for g, h in pairs for c in v[g][2] for d in v[h][2]]}


def _evaluate(ev: Evaluator, plan: dict[str, list[dict]], progress: bool) -> dict[str, dict]:
    """Run every configuration once; per phase: evaluations, forward passes, seconds."""
    keys = {frozenset(c.items()) for phase in plan.values() for c in phase}
    stats = {}
    with tqdm(total=len(keys), desc="sensitivity", unit="eval", disable=not progress, leave=False) as bar:
        for phase, configs in plan.items():
            start, e0, f0 = time.perf_counter(), ev.evaluations, ev.forward_passes
            for config in configs:
                if not ev.seen(config):
                    ev.loss(config)
                    bar.update(1)
            stats[phase] = {"evaluations": ev.evaluations - e0, "forward_passes": ev.forward_passes - f0,
                            "seconds": round(time.perf_counter() - start, 3)}
    return stats


def shrink(term: np.ndarray, lam: float) -> float:
    """Soft threshold of [T, T_a, T_b] at lam * |T_a - T_b| / 2."""
    sigma = abs(term[1] - term[2]) / 2.0
    return float(np.sign(term[0]) * max(abs(term[0]) - lam * sigma, 0.0))


def monotone(terms: dict) -> dict:
    """Fewer bits never cost less: each candidate's loss is raised to that of any candidate with more
    weight bits of the same form (a running max from the most precise down; removes noise inversions).
    Candidates of different forms (block sizes, dynamic or weight-only) are not compared."""
    out, floor = {}, {}
    for c in sorted(terms, key=lambda c: -c[0]):
        kind = candidates.form(c) if candidates.form(c) != "float" else None
        floor[kind] = max(floor.get(kind, 0.0), terms[c])
        out[c] = floor[kind] if kind is not None else terms[c]
    return {c: out[c] for c in terms}


def assemble(ev: Evaluator, groups, bits, base, pairs, low, act: int, lam: float,
             incontext: bool = True, forms: dict | None = None, vectors: dict | None = None) -> dict:
    """The table's terms from the evaluator's (memoized) losses (no in-context terms when not scored);
    form groups (`forms`, see `_values`) are keyed by their candidates; `vectors` (group -> width ->
    [term, halves]) replaces the singles' measurements where given (extrapolated widths, widths.py)."""
    L, ref, vectors = ev.loss, ev.loss({}), vectors or {}
    v = _values(groups, bits, base, low, forms)

    def R(config):
        if len(config) == 1:
            ((g, b),) = config.items()
            if b in vectors.get(g, {}):
                return vectors[g][b]
        return ev.relative(config)

    def cand(value):
        return value if isinstance(value, tuple) else (value, act)
    all_base = {g: v[g][1] for g in groups}
    singles = {g: monotone({cand(b): shrink(R({g: b}), lam) for b in v[g][0]}) for g in groups}
    base_loss = L(all_base)
    context = {g: {cand(b): 0.0 if b == v[g][1] else shrink(L({**all_base, g: b}) - base_loss, lam)
                   for b in v[g][0]} if incontext else {} for g in groups}
    terms = {(g, h): {(cand(c), cand(d)): shrink(R({g: c, h: d}) - R({g: c}) - R({h: d}), lam)
                      for c in v[g][2] for d in v[h][2]} for g, h in pairs}
    return {"singles": singles, "incontext": context, "pairs": terms,
            "reference_loss": float(ref[0]), "base_loss": float(base_loss[0])}


@dataclass
class Scoring:
    """One scoring run: the evaluator over the probe model and what to evaluate."""

    evaluator: Evaluator
    groups: list[str]
    bits: tuple[int, ...]
    act: int
    pairs: list[tuple[str, str]]
    options: SensitivityOptions
    forms: dict = dataclasses.field(default_factory=dict)   # form group -> (candidates, base candidate)
    widths: Widths | None = None      # options.extrapolate: which widths to measure (widths.py)
    phases: dict = dataclasses.field(default_factory=dict)
    started: float = dataclasses.field(default_factory=time.perf_counter)

    @property
    def low(self) -> list[int]:
        pair_bits = self.options.pair_bits
        return [b for b in self.bits if b < self.options.base_bits and (pair_bits is None or b in pair_bits)]

    def run(self) -> "Scoring":
        plan = _plan(self.groups, self.bits, self.options.base_bits, self.pairs, self.low,
                     self.options.incontext, self.forms)
        if self.widths is not None:       # singles up the width ladder, as far as they matter (widths.py)
            static = set(self.widths.groups)
            first = [c for c in plan.pop("singles") if not c or not set(c) <= static]
            for k, phase in enumerate(self.widths.phases[:len(self.widths.ladder)]):
                configs = (first if k == 0 else []) + self.widths.step(k, self.evaluator.relative)
                self.phases.update(_evaluate(self.evaluator, {phase: configs}, self.options.progress))
        self.phases = {**self.phases, **_evaluate(self.evaluator, plan, self.options.progress)}
        return self

    def table(self, shrink: float | None = None) -> SensitivityTable:
        ev, opts = self.evaluator, self.options
        lam = opts.shrink if shrink is None else shrink
        vectors = self.widths.vectors(ev.relative) if self.widths is not None else None
        terms = assemble(ev, self.groups, self.bits, opts.base_bits, self.pairs, self.low, self.act, lam,
                         opts.incontext, self.forms, vectors)
        extrapolated = {"widths": self.widths.summary(ev.relative)} if self.widths is not None else {}
        extra = tuple(dict.fromkeys(c for cands, _ in self.forms.values() for c in cands))
        return SensitivityTable(
            groups=tuple(self.groups), candidates=tuple((b, self.act) for b in self.bits) + extra,
            metric=",".join(ev.kinds), samples=ev.n, evaluations=ev.evaluations,
            forward_passes=ev.forward_passes, seconds=time.perf_counter() - self.started,
            base=(opts.base_bits, self.act), phases=self.phases,
            meta={"hops": opts.hops, "shrink": lam, "batch": ev.batch,
                  "quantize_activations": opts.quantize_activations,
                  **({"dither": ev.dither} if ev.dither > 1 else {}),
                  "not_legal": [b for b in opts.weight_bits if b not in self.bits], **extrapolated},
            **terms)

"""Score activation precision at the model output: one probe with a switch per activation group.

The activation probe (`build_probe(..., act_groups=..., fixed_weight_bits=w)`) has Emit's weights at the
default bits w as constants and switches each activation group between float (slot 0, its fast twin)
and the target's activation bit-widths. With L the loss against the FP32 model and D the loss against
the base (weights at w, every activation float; `Evaluator.relative`, the metric of the weight terms):

    gate           L_w          = L(base): what the weights at w cost with float activations
                   L_act        = L(every activation group at the base bits): the all-W8A8 loss
    screening      D(S)         = D(every group of S at the base bits)     for sets S of groups
    act singles    A_k(a)       = D(group k at a, everything else float)           outliers x |bits|
    act pairs      A_kl(a, a')  = D(k at a, l at a') - A_k(a) - A_l(a')             (base bits only)

Outliers are the groups with A_k(base) > L_w (allocation/act_problem.py: the only groups the default
decides). They are found by adaptive group testing instead of scoring every group: the losses add
(measured: the sum of the singles is within 5-20 % of L_act on MiniLM and ResNet-56), so a set with
D(S) <= L_w holds no outlier; a set above it is split in two halves (in graph order, so a set runs from
its first member's segment) until single groups remain -- O(m log K) evaluations for m outliers among
K groups instead of K x |bits| (ResNet-56, no outlier, damage spread over 87 groups: 7 evaluations).

Float contributes 0 (it is the base). A group is scored from the first segment holding one of its members,
on the cached float prefix (`dfq_onnx.sensitivity.segments`): about half a forward pass per single.
The singles are shrunk like the weight terms (|T| - lambda sigma, sigma from the even/odd halves) and
made monotone (fewer bits never cost less). This module only measures; allocation decides.
"""

from __future__ import annotations

import heapq
import time
from dataclasses import dataclass, field

import numpy as np

from dfq_onnx.core.state import FLOAT_BITS, ActGroup
from dfq_onnx.sensitivity.evaluator import Evaluator


@dataclass
class ActTerms:
    """Activation terms of the sensitivity table (see the module docstring)."""

    groups: tuple[str, ...]
    bits: tuple[int, ...]                                    # scored bit-widths (float is the base, 0)
    singles: dict[str, dict[int, float]]                     # the outliers' singles (others: not scored)
    pairs: dict[tuple[str, str], dict[tuple[int, int], float]] = field(default_factory=dict)
    act_loss: float = 0.0        # L(weights at the default bits, every activation group at the base bits)
    weight_loss: float = 0.0     # L(weights at the default bits, float activations)
    screened: dict[str, float] = field(default_factory=dict)  # D(S) of each tested set (ids joined by ",")
    undecided: int = 0           # groups in sets the screening left unsplit at its evaluation cap
    options_form: tuple[str, ...] = ()   # form-option input groups not cleared for static: they keep the form
    evaluations: int = 0
    seconds: float = 0.0


def switchable(act_groups: list[ActGroup]) -> list[ActGroup]:
    """Activation groups with a choice (more than one legal precision)."""
    return [ag for ag in act_groups if len(ag.choices) > 1]


def scored_bits(act_groups: list[ActGroup]) -> tuple[int, ...]:
    """The bit-widths the activation switches carry: every non-float choice of a switchable group."""
    return tuple(sorted({b for ag in switchable(act_groups) for b in ag.choices if b != FLOAT_BITS}))


BROKEN = 1e6   # the loss of an output a quantizer makes non-finite (var < 0 under a square root): above any
               # finite loss of a usable output, finite for the ILP


def _damage(ev: Evaluator, config: dict) -> np.ndarray:
    """`ev.relative(config)` with a non-finite loss read as BROKEN (NaN compares as no damage)."""
    d = ev.relative(config)
    return np.where(np.isfinite(d), d, BROKEN)


def _shrunk(term: np.ndarray, lam: float) -> float:
    sigma = abs(term[1] - term[2]) / 2.0
    return float(np.sign(term[0]) * max(abs(term[0]) - lam * sigma, 0.0))


def _monotone(terms: dict[int, float]) -> dict[int, float]:
    out, floor = {}, 0.0
    for b in sorted(terms, reverse=True):
        floor = max(floor, terms[b])
        out[b] = floor
    return {b: out[b] for b in terms}


def gate(ev: Evaluator, act_ids: list[str], base: int) -> tuple[float, float]:
    """(L_act, L_w) of the module docstring (two evaluations)."""
    weights = float(ev.loss({})[0])
    act = float(ev.loss({a: base for a in act_ids})[0]) if act_ids else weights
    return act, weights


def screen(ev: Evaluator, ids: list[str], base: int, threshold: float, tested: dict,
           max_evals: int | None = None) -> list[str]:
    """Groups of `ids` whose damage at `base` alone exceeds `threshold`, by halving (module docstring),
    in graph order; every tested set's D(S) is recorded in `tested`. Sets above the threshold are split
    best first (highest D(S) / |S|, then graph order); after `max_evals` new evaluations the sets still
    unsplit are left undecided (their groups keep the base bits). Without a cap the tested sets, and so
    the result, are those of plain recursive halving."""
    pos = {g: i for i, g in enumerate(ids)}
    start, found, heap = ev.evaluations, [], []

    def test(group: list[str]) -> None:
        d = float(_damage(ev, {a: base for a in group})[0])
        tested[",".join(group)] = d
        if d > threshold and len(group) == 1:
            found.append(group[0])
        elif d > threshold:
            heapq.heappush(heap, (-d / len(group), pos[group[0]], group))

    if ids:
        test(list(ids))
    while heap and (max_evals is None or ev.evaluations - start < max_evals):
        group = heapq.heappop(heap)[2]
        test(group[:len(group) // 2])
        test(group[len(group) // 2:])
    return sorted(found, key=pos.get)


def budget_screen(ev: Evaluator, ids: list[str], base: int, budget: float, tested: dict,
                  max_evals: int | None = None) -> list[str]:
    """The groups of `ids` cleared for `base` within one shared `budget` of damage: sets are taken
    cheapest per group first (D(S) / |S|), a set whose D(S) fits what is left of the budget is cleared
    and spends it, one that does not is split in two halves (in graph order) while `max_evals` new
    evaluations last; single groups that do not fit, and sets left unsplit at the cap, are not cleared.
    The damages of sets measured apart need not add up, so the cleared groups are then measured
    together: while that exceeds the budget, the cleared set with the most damage per group is put back
    (one evaluation each). Every tested set's D(S) is recorded in `tested`."""
    pos = {g: i for i, g in enumerate(ids)}
    start, total, cleared, heap = ev.evaluations, budget, [], []

    def test(group: list[str]) -> None:
        d = max(float(_damage(ev, {a: base for a in group})[0]), 0.0)
        tested[",".join(group)] = d
        heapq.heappush(heap, (d / len(group), pos[group[0]], d, group))

    if ids:
        test(list(ids))
    while heap:
        _, _, d, group = heapq.heappop(heap)
        if d <= budget:
            budget -= d
            cleared.append((d / len(group), group))
        elif len(group) > 1 and (max_evals is None or ev.evaluations - start < max_evals):
            test(group[:len(group) // 2])
            test(group[len(group) // 2:])
    cleared.sort()
    while len(cleared) > 1:
        joint = [g for _, group in cleared for g in group]
        d = max(float(_damage(ev, {a: base for a in joint})[0]), 0.0)
        tested[",".join(sorted(joint, key=pos.get))] = d
        if d <= total:
            break
        cleared.pop()
    return sorted((g for _, group in cleared for g in group), key=pos.get)


def score_singles(ev: Evaluator, ids: list[str], bits: tuple[int, ...],
                  lam: float) -> dict[str, dict[int, float]]:
    """A_k(a) of the groups `ids` at every width (shrunk, monotone in the bits)."""
    return {a: _monotone({b: max(_shrunk(_damage(ev, {a: b}), lam), 0.0) for b in bits}) for a in ids}


def score_pairs(ev: Evaluator, pairs: list[tuple[str, str]], base: int, lam: float) -> dict:
    """A_kl(base, base) for the pairs (shrunk; only the base width, the pair the ILP meets most)."""
    out = {}
    for k, m in pairs:
        term = _damage(ev, {k: base, m: base}) - _damage(ev, {k: base}) - _damage(ev, {m: base})
        out[(k, m)] = {(base, base): _shrunk(term, lam)}
    return out


def score_activations(ev: Evaluator, act_groups: list[ActGroup], base: int, lam: float = 1.0,
                      pairs: bool = False, max_evals: int | None = None,
                      options: tuple[str, ...] = ()) -> ActTerms:
    """Gate, screening, the outliers' singles (and pairs among them) on the activation probe behind `ev`;
    `max_evals` caps the gate and screening evaluations (the singles of the groups found are scored
    whatever the cap: |bits| evaluations each). `options`: the input groups of form options
    (passes/settle_forms.py), screened again on their own (`budget_screen`, its own cap of `max_evals`):
    together, the ones cleared for their static encoding may cost the output at most what every W8
    weight costs, L_w (the static encodings replace forms that quantize per call, a robustness the
    synthetic samples cannot show); the others keep their form (`options_form`)."""
    start, e0 = time.perf_counter(), ev.evaluations
    ids = [ag.id for ag in switchable(act_groups)]
    bits = scored_bits(act_groups)
    act_loss, weight_loss = gate(ev, ids, base)
    tested: dict[str, float] = {}
    cap = None if max_evals is None else max(max_evals - (ev.evaluations - e0), 1)
    found = screen(ev, ids, base, weight_loss, tested, cap)
    covered = {g for k in tested for g in k.split(",") if tested[k] <= weight_loss} | set(found)
    undecided = sum(g not in covered for g in ids)
    opts = [g for g in ids if g in options]
    tested_opts: dict[str, float] = {}
    cleared = set(budget_screen(ev, opts, base, weight_loss, tested_opts, max_evals))
    tested.update({f"options:{k}": v for k, v in tested_opts.items()})     # the report's record
    singles = score_singles(ev, found, bits, lam)
    near = [(k, m) for i, k in enumerate(found) for m in found[i + 1:]] if pairs else []
    return ActTerms(tuple(ids), bits, singles, score_pairs(ev, near, base, lam), act_loss, weight_loss,
                    tested, undecided, tuple(g for g in opts if g not in cleared),
                    ev.evaluations - e0, time.perf_counter() - start)


def terms_to_dict(t: ActTerms) -> dict:
    """Plain JSON values (the sensitivity table's `activations`, the cache entry)."""
    return {"groups": list(t.groups), "bits": list(t.bits),
            "singles": {k: {str(b): v for b, v in row.items()} for k, row in t.singles.items()},
            "pairs": [{"groups": [k, m], "terms": {f"{a}|{b}": v for (a, b), v in row.items()}}
                      for (k, m), row in t.pairs.items()],
            "act_loss": t.act_loss, "weight_loss": t.weight_loss, "screened": dict(t.screened),
            "undecided": t.undecided, "options_form": list(t.options_form),
            "evaluations": t.evaluations, "seconds": round(t.seconds, 3)}


def terms_from_dict(d: dict) -> ActTerms:
    return ActTerms(
        groups=tuple(d["groups"]), bits=tuple(int(b) for b in d["bits"]),
        singles={k: {int(b): float(v) for b, v in row.items()} for k, row in d["singles"].items()},
        pairs={tuple(p["groups"]): {tuple(int(x) for x in ab.split("|")): float(v)
                                    for ab, v in p["terms"].items()} for p in d["pairs"]},
        act_loss=float(d["act_loss"]), weight_loss=float(d["weight_loss"]),
        screened={k: float(v) for k, v in d["screened"].items()}, undecided=int(d.get("undecided", 0)),
        options_form=tuple(d.get("options_form", ())),
        evaluations=int(d["evaluations"]), seconds=float(d["seconds"]))

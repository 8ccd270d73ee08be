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

Joint check. The screen tests sets against L_w one at a time; on a model whose all-A8 plan is broken,
L_act > BROKEN x L_w (the activations cost the output more than two bits' worth of SQNR, 16x in power,
beyond the W8 weights; the zoo's worst is 8.7x, PP-OCRv4 rec), the damage usually sits in a few groups
that the evaluation cap left inside an unsplit set (PP-PicoDet's layout detector: 51x; its first 40 groups
hold 2.29 of 2.43, 7 of them above L_w alone). There the screen continues for up to `extra_evals` more
evaluations (its tested sets are memoized: it resumes where it stopped), and the outliers are then put
back to a wider precision (`rescue`: A16 where the target offers it, else float) worst single first,
measuring the whole plan (L vs FP32) after each, until it fits BROKEN x L_w or the outliers run out:

    joint          J_i          = L(outliers 1..i at their rescue precision, every other group at base)

Models whose L_act fits are scored exactly as before (no extra evaluation).

The task reading. L_act > BROKEN x L_w compares two losses; where the W8 weights are nearly exact (L_w
tiny: CREPE full's 1024-channel convolutions, 44x with 99.9 % of FP32's pitches kept on real frames) it
reads any 8-bit plan as broken. Where every output is read by its argmax (sensitivity/decisions.py: a
classifier, per-position distributions, a vector of sigmoid scores) the all-base plan's outputs (one more
evaluation, only on a plan the ratio calls broken) are read for the task: a plan that keeps FP32's pick
at >= 99 % of the clearly decided positions is not broken (no extra screening, no joint check; the
default rule and the cost allowance decide as on any model). Outputs without a class axis (maps, states,
embeddings: PP-PicoDet's boxes) have no such reading and the ratio decides alone, as before.

Float contributes 0 (it is the base). A group is scored from the first segment holding one of its members,
on the cached float prefix (`dfq_onnx.sensitivity.segments`): about half a forward pass per single.
The singles are shrunk like the weight terms (|T| - lambda sigma, sigma from the even/odd halves) and
made monotone (fewer bits never cost less). This module only measures; allocation decides.
"""

from __future__ import annotations

import heapq
import math
import time
from dataclasses import dataclass, field

import numpy as np

from dfq_onnx.core.state import FLOAT_BITS, ActGroup
from dfq_onnx.sensitivity.decisions import class_axis, decisions_kept, keeps_decisions
from dfq_onnx.sensitivity.evaluator import Evaluator

BROKEN = 16.0   # L_act above BROKEN x L_w: the all-base plan is broken (module docstring, joint check)


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
    joint: list[tuple[str, int, float]] = field(default_factory=list)   # (group, precision, J_i): joint check
    evaluations: int = 0
    seconds: float = 0.0
    decisions: dict | None = None   # the task reading of a plan the ratio calls broken (module docstring)


def switchable(act_groups: list[ActGroup]) -> list[ActGroup]:
    """Activation groups with a choice (more than one legal precision)."""
    return [ag for ag in act_groups if len(ag.choices) > 1]


def scored_bits(act_groups: list[ActGroup]) -> tuple[int, ...]:
    """The bit-widths the activation switches carry: every non-float choice of a switchable group."""
    return tuple(sorted({b for ag in switchable(act_groups) for b in ag.choices if b != FLOAT_BITS}))


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
        d = float(ev.relative({a: base for a in group})[0])
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


def score_singles(ev: Evaluator, ids: list[str], bits: tuple[int, ...],
                  lam: float) -> dict[str, dict[int, float]]:
    """A_k(a) of the groups `ids` at every width (shrunk, monotone in the bits)."""
    return {a: _monotone({b: max(_shrunk(ev.relative({a: b}), lam), 0.0) for b in bits}) for a in ids}


def score_pairs(ev: Evaluator, pairs: list[tuple[str, str]], base: int, lam: float) -> dict:
    """A_kl(base, base) for the pairs (shrunk; only the base width, the pair the ILP meets most)."""
    out = {}
    for k, m in pairs:
        term = ev.relative({k: base, m: base}) - ev.relative({k: base}) - ev.relative({m: base})
        out[(k, m)] = {(base, base): _shrunk(term, lam)}
    return out


def joint_bound(weight_loss: float) -> float:
    """BROKEN x L_w: the loss above which the all-base plan is broken and below which the joint check's
    plan fits (module docstring)."""
    return BROKEN * weight_loss


def broken(act_loss: float, weight_loss: float) -> bool:
    """Whether the all-base plan is broken: L_act > BROKEN x L_w (module docstring)."""
    return act_loss > joint_bound(weight_loss)


def task_reading(ev: Evaluator, ids: list[str], base: int) -> dict | None:
    """The all-base plan's outputs read for the task (module docstring): `decisions.decisions_kept`, or
    None where an output has no class axis."""
    if any(class_axis(k, r.shape) is None for k, r in zip(ev.kinds, ev.reference)):
        return None          # an output without a class axis: nothing to read, no forward pass
    outs = ev.outputs({a: base for a in ids})
    ev.evaluations += 1
    return decisions_kept(ev.kinds, ev.reference, outs)


def rescue(ag: ActGroup) -> int:
    """The precision the joint check gives an outlier: its widest integer choice above the base (A16:
    256x less rounding noise, integer kernels kept), else float."""
    ints = [b for b in ag.choices if b != FLOAT_BITS]
    return max(ints) if len(ints) > 1 else FLOAT_BITS


def joint_check(ev: Evaluator, act_groups: list[ActGroup], found: list[str],
                singles: dict[str, dict[int, float]], base: int,
                weight_loss: float) -> list[tuple[str, int, float]]:
    """J_i of the module docstring: the outliers among `found` (shrunk single above L_w, the decision's
    rule) at their `rescue` precision, worst single first (graph order among ties), until the whole plan's
    loss vs FP32 is at most BROKEN x L_w."""
    by_id = {ag.id: ag for ag in act_groups}
    ids = [ag.id for ag in switchable(act_groups)]
    bound = joint_bound(weight_loss)
    worse = [k for k in found if singles[k].get(base, 0.0) > weight_loss]
    order = sorted(worse, key=lambda k: (-singles[k].get(base, 0.0), ids.index(k)))
    config = {a: base for a in ids}
    out = []
    for k in order:
        best = rescue(by_id[k])
        if best == FLOAT_BITS:
            config.pop(k)
        else:
            config[k] = best
        out.append((k, best, float(ev.loss(config)[0])))
        if out[-1][2] <= bound:
            break
    return out


def score_activations(ev: Evaluator, act_groups: list[ActGroup], base: int, lam: float = 1.0,
                      pairs: bool = False, max_evals: int | None = None,
                      extra_evals: int | None = None) -> ActTerms:
    """Gate, screening, the outliers' singles (and pairs among them) on the activation probe behind `ev`;
    `max_evals` caps the gate and screening evaluations (the singles of the groups found are scored
    whatever the cap: |bits| evaluations each). With `extra_evals` given (the default plan's decision;
    not mixed precision, whose allocator weighs every group itself) a broken plan (`broken`) screens up
    to `extra_evals` more and gets the joint check."""
    start, e0 = time.perf_counter(), ev.evaluations
    ids = [ag.id for ag in switchable(act_groups)]
    bits = scored_bits(act_groups)
    act_loss, weight_loss = gate(ev, ids, base)
    tested: dict[str, float] = {}
    cap = None if max_evals is None else max(max_evals - (ev.evaluations - e0), 1)
    found = screen(ev, ids, base, weight_loss, tested, cap)
    bad = extra_evals is not None and broken(act_loss, weight_loss)
    reading = task_reading(ev, ids, base) if bad else None
    bad = bad and not keeps_decisions(reading)
    if bad and cap is not None and extra_evals > 0:     # resumes: the tested sets are memoized
        found = screen(ev, ids, base, weight_loss, tested, cap + extra_evals)
    covered = {g for k in tested for g in k.split(",") if tested[k] <= weight_loss} | set(found)
    undecided = sum(g not in covered for g in ids)
    singles = score_singles(ev, found, bits, lam)
    near = [(k, m) for i, k in enumerate(found) for m in found[i + 1:]] if pairs else []
    pair_terms = score_pairs(ev, near, base, lam)
    joint = joint_check(ev, act_groups, found, singles, base, weight_loss) if bad else []
    return ActTerms(tuple(ids), bits, singles, pair_terms, act_loss, weight_loss,
                    tested, undecided, joint, ev.evaluations - e0, time.perf_counter() - start, reading)


def unsplit(terms: ActTerms) -> list[int]:
    """Sizes of the screened sets above L_w that the screen left unsplit (their groups are undecided)."""
    tested, sizes = terms.screened, []
    for key, d in tested.items():
        group = key.split(",")          # `screen`'s key; a split set's first half is `screen`'s next key
        if d > terms.weight_loss and len(group) > 1 and ",".join(group[:len(group) // 2]) not in tested:
            sizes.append(len(group))
    return sizes


def to_finish(terms: ActTerms) -> int:
    """Evaluations the screen would have needed to decide every group: those it spent, plus for each set
    it left unsplit the halvings down to one group (two evaluations a level; one outlier a set, so a
    lower bound)."""
    return terms.evaluations + sum(2 * math.ceil(math.log2(s)) for s in unsplit(terms))


def cut_short(terms: ActTerms) -> bool:
    """Whether the evaluation cap left most groups undecided (the screen did not finish)."""
    return 2 * terms.undecided > len(terms.groups)


def terms_to_dict(t: ActTerms) -> dict:
    """Plain JSON values (the sensitivity table's `activations`, the cache entry)."""
    return {"groups": list(t.groups), "bits": list(t.bits),
            "singles": {k: {str(b): v for b, v in row.items()} for k, row in t.singles.items()},
            "pairs": [{"groups": [k, m], "terms": {f"{a}|{b}": v for (a, b), v in row.items()}}
                      for (k, m), row in t.pairs.items()],
            "act_loss": t.act_loss, "weight_loss": t.weight_loss, "screened": dict(t.screened),
            "undecided": t.undecided, "joint": [list(j) for j in t.joint], "evaluations": t.evaluations,
            "seconds": round(t.seconds, 3), "decisions": t.decisions}


def terms_from_dict(d: dict) -> ActTerms:
    return ActTerms(
        groups=tuple(d["groups"]), bits=tuple(int(b) for b in d["bits"]),
        singles={k: {int(b): float(v) for b, v in row.items()} for k, row in d["singles"].items()},
        pairs={tuple(p["groups"]): {tuple(int(x) for x in ab.split("|")): float(v)
                                    for ab, v in p["terms"].items()} for p in d["pairs"]},
        act_loss=float(d["act_loss"]), weight_loss=float(d["weight_loss"]),
        screened={k: float(v) for k, v in d["screened"].items()}, undecided=int(d.get("undecided", 0)),
        joint=[(str(k), int(a), float(v)) for k, a, v in d.get("joint", [])],
        evaluations=int(d["evaluations"]), seconds=float(d["seconds"]), decisions=d.get("decisions"))

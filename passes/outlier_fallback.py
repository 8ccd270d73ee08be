"""KeepFloatChosen's fallback when the outliers chosen past the cost allowance time beyond its line: keep the
prefix of them that buys the most measured gain within the line, not none of them.

The activation decision chose n outliers without the allowance (passes/act_precision.timed); timed against
the all-base plan they ran beyond the line 1 + allowance + MARGIN. Going straight back to the allowance's
choice (often the all-base plan) throws away every float, though most of the measured cost may sit in a
few of them. Instead:

    units    = the groups joined where one's writer reads the other (a float island: its inner Q/DQ
               pairs go and its nodes run float together; a chain of elementwise ops -- LCNetV3's
               hard-swish -> x * a -> + b -- carries one rounding error through every link, so floating
               part of it buys nothing: PP-OCRv5 rec's a118 / a119 and a137-a139)
    gain(u)  = L(chosen plan with u at the allowance's choice) - L(chosen plan)   (`in_context`: L the
               activation probe's loss on the decision's scoring rows, `act_terms.plan_loss`, built
               only on this path; without it, the screen's largest single in u: loss(g alone at the base
               bits) - loss(g at its choice))
    order    = the units by gain, largest first (ties: the screen's order, then group id)
    plan(k)  = the allowance's choice + the first k units at their chosen precision,  0 <= k <= n units
    k*       = the largest k < n whose plan times within the line against the all-base plan, among the k
               whose probe loss is below plan(0)'s (a float that measures no gain is not worth timing)

The screen's singles (each group alone at the base bits, the rest float) rank PP-OCRv5 rec's a118-a119
chain last; in the chosen plan it is the one whose removal costs most (1.29 vs 0.57; all-A8 1.09), and on
real lines it alone reads 84.7 % exact against 30-34 % for the others (BENCHMARKS.md, session 25).

plan(n) is the chosen plan (timed beyond), plan(0) the allowance's own choice (`keep_float._priced`, taken
when no k > 0 fits). A float group's cost is near-additive (its readers' kernels at float speed plus the
Q/DQ at its edges), so the ratio grows with k and k* is found by bisection: at most ceil(log2 n) timings,
each cached by its precisions like every KeepFloatChosen timing (deterministic given the cache).

What it gives up -- the groups left at the allowance's choice and their gain -- is in the report
(`activations.measured_cost.fallback`) and a warning.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from dfq_onnx.core.pass_base import PassResult
from dfq_onnx.core.state import FLOAT_BITS, BitPlan, CompileState

log = logging.getLogger(__name__)


def units(groups: list[str], act_groups) -> list[list[str]]:
    """`groups` joined where a writer of one reads a member of the other (module docstring); each unit in
    group-id order, the units in the order of their first group."""
    by_id = {ag.id: ag for ag in act_groups}
    root = {g: g for g in groups}

    def find(g: str) -> str:
        while root[g] != g:
            g = root[g]
        return g
    for g in groups:
        for h in groups:
            if g != h and set(by_id[h].writers) & set(by_id[g].readers):
                root[find(h)] = find(g)
    out: dict[str, list[str]] = {}
    for g in sorted(groups):
        out.setdefault(find(g), []).append(g)
    return sorted(out.values())


def ordered(outliers: dict, groups: list[str], base: int, act_groups) -> list[tuple[list[str], float]]:
    """(unit, its largest screened gain) over the units of `groups`, largest gain first (module
    docstring); `outliers` is the activation note's per-group record (`loss` by precision, `choice`)."""
    def gain(k: str) -> float:
        loss = outliers[k]["loss"]
        return float(loss[str(base)]) - float(loss[str(outliers[k]["choice"])])
    scored = [(u, max(gain(k) for k in u)) for u in units(groups, act_groups)]
    return sorted(scored, key=lambda ug: (-ug[1], ug[0]))


def prefix_plan(priced: dict[str, int], chosen: dict[str, int], order: list[tuple[list[str], float]],
                k: int) -> dict[str, int]:
    """plan(k): the allowance's choice with the first k units of `order` at their chosen precision."""
    return {**priced, **{g: chosen[g] for u, _ in order[:k] for g in u}}


def largest_within(n: int, within: Callable[[int], bool]) -> int:
    """The largest k in 1..n-1 with within(k), by bisection over a ratio that grows with k (plan(n) known
    beyond, plan(0) the fallback's floor); 0 when none."""
    lo, hi = 0, n
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if within(mid):
            lo = mid
        else:
            hi = mid
    return lo


def in_context(order: list[tuple[list[str], float]], priced: dict[str, int], chosen: dict[str, int],
               loss: Callable[[dict[str, int]], float]) -> tuple[list[tuple[list[str], float]], dict]:
    """The units re-ordered by what each buys in the chosen plan, measured on the activation probe:
    loss(chosen plan with the unit at the allowance's choice) - loss(chosen plan), largest first (ties:
    the screened order), and the record of those losses."""
    full = loss(chosen)
    without = {}
    for u, _ in order:
        without[",".join(u)] = loss({**{k: a for k, a in chosen.items() if k not in u},
                                     **{k: priced[k] for k in u if k in priced}})
    rank = {",".join(u): i for i, (u, _) in enumerate(order)}
    measured = sorted(((u, without[",".join(u)] - full) for u, _ in order),
                      key=lambda ug: (-ug[1], rank[",".join(ug[0])]))
    return measured, {"chosen": full, "without": without}


def fallback(priced: dict[str, int], chosen: dict[str, int], outliers: dict, past: list[str], base: int,
             act_groups, time_plan: Callable[[dict[str, int]], dict],
             loss: Callable[[dict[str, int]], float] | None = None) -> dict:
    """The fallback's record: its plan ("acts", None when no prefix fits), the groups kept and given up
    with their gain, every timing tried. `time_plan(acts)` times a plan against the all-base plan:
    {"ratio", "within", "note"}. With `loss(acts)` (the activation probe's loss of a plan) the units are
    ordered by their measured gain in the chosen plan (`in_context`), and a prefix measured no better
    than the allowance's choice is not a candidate (it would cost time for nothing)."""
    order = ordered(outliers, past, base, act_groups)
    probe = None
    ks = list(range(1, len(order)))
    if loss is not None and ks:
        order, probe = in_context(order, priced, chosen, loss)
        floor = loss(priced)
        probe["allowance_choice"] = floor
        probe["prefix"] = {k: loss(prefix_plan(priced, chosen, order, k)) for k in ks}
        ks = [k for k in ks if probe["prefix"][k] < floor]
    timed: dict[int, dict] = {}

    def within(i: int) -> bool:
        k = ks[i - 1]
        timed[k] = time_plan(prefix_plan(priced, chosen, order, k))
        return timed[k]["within"]

    i = largest_within(len(ks) + 1, within)
    k = ks[i - 1] if i else 0
    tried = [{"groups": [g for u, _ in order[:j] for g in u], "ratio": round(t["ratio"], 4),
              "within": t["within"]} for j, t in sorted(timed.items())]
    kept, given = order[:k], order[k:]
    return {"acts": prefix_plan(priced, chosen, order, k) if k else None,
            "kept": [g for u, _ in kept for g in u], "given_up": [g for u, _ in given for g in u],
            "gain_kept": round(sum(v for _, v in kept), 6),
            "gain_given_up": round(sum(v for _, v in given), 6), "gain": "probe" if probe else "screened",
            "probe": probe and {**probe, "prefix": {str(j): v for j, v in probe["prefix"].items()}},
            "ratio": round(timed[k]["ratio"], 4) if k else None, "timing": timed.get(k), "tried": tried}


def give_back(outliers: dict, groups: list[str], priced: dict[str, int], base: int) -> None:
    """The activation note's record of `groups` given up: each one's choice becomes the allowance's (the
    base bits where it chose none), the choice it had is kept as `proposed`."""
    for k in groups:
        if k in outliers:
            outliers[k]["proposed"], outliers[k]["choice"] = outliers[k]["choice"], priced.get(k, base)


def apply(state: CompileState, first: dict, unpriced: dict, fb: dict, ratio: float) -> PassResult:
    """Write the fallback plan `fb` into the state and the report (keep_float's `chosen_plan` note is the
    fallback's timing, `unpriced_plan` the chosen plan's), with the warning saying what it gave up."""
    base = state.target.default_act_bits
    priced = {k: int(a) for k, a in unpriced["priced"].items()}
    state.plan = BitPlan(state.plan.bits, acts=dict(sorted(fb["acts"].items())))
    give_back(state.report.notes.get("activations", {}).get("outliers", {}), fb["given_up"], priced, base)
    t = fb["timing"]
    first["chosen_plan"] = {**t["note"], "fallback": True}
    unpriced["fallback"] = {k: v for k, v in fb.items() if k not in ("acts", "timing")}
    floats = sum(a == FLOAT_BITS for a in fb["acts"].values())
    log.warning("the outliers chosen past the cost allowance ran %.2fx the all-A%d plan (line %.3f): kept "
                "%s (%.2fx, %s gain %.3g), gave up %s (%s gain %.3g)", ratio, base, t["note"]["line"],
                ", ".join(fb["kept"]), fb["ratio"], fb["gain"], fb["gain_kept"], ", ".join(fb["given_up"]),
                fb["gain"], fb["gain_given_up"])
    return PassResult(False, f"outliers past the allowance {ratio:.3f}x the all-base plan; the "
                             f"{len(fb['kept'])} with the most {fb['gain']} gain {fb['ratio']:.3f}x: kept "
                             f"({floats} float groups)")

"""KeepFloatChosen's fallback beyond the line (passes/outlier_fallback.py): the order of the outliers and the
bisection over their prefixes, on hand-made records and an additive cost (no timing)."""

from __future__ import annotations

from types import SimpleNamespace

from dfq_onnx.passes import outlier_fallback as of


def _groups(ids, chains=()):
    """Activation groups each written by its own node and read by the next id's writer only along a chain."""
    reads = {a: (f"r_{a}",) for a in ids}
    for chain in chains:
        for a, b in zip(chain, chain[1:]):
            reads[a] = (f"w_{b}",)
    return [SimpleNamespace(id=a, readers=reads[a], writers=(f"w_{a}",)) for a in ids]


def _outliers(gains: dict[str, float]) -> dict:
    return {k: {"loss": {"8": g, "32": 0.0}, "choice": 32} for k, g in gains.items()}


def test_the_screened_gain_orders_the_groups_ties_by_id():
    gains = {"a1": 0.19, "a9": 0.2, "a3": 0.15, "a2": 0.15}
    order = of.ordered(_outliers(gains), sorted(gains), 8, _groups(gains))
    assert [u for u, _ in order] == [["a9"], ["a1"], ["a2"], ["a3"]]


def test_a16_choice_gains_its_own_loss_difference():
    rec = {"a1": {"loss": {"8": 0.3, "16": 0.1, "32": 0.0}, "choice": 16}}
    assert of.ordered(rec, ["a1"], 8, _groups(["a1"])) == [(["a1"], 0.3 - 0.1)]


def test_a_chain_of_outliers_is_one_unit_with_its_largest_gain():
    """PP-OCRv5 rec's shape: hard-swish -> x * a (a118 -> a119) and hard-swish -> x * a -> + b (a137 -> a138
    -> a139): floating part of a chain leaves its rounding in place, so each chain is kept or given up
    whole, ranked by its largest member."""
    gains = {"a1": 0.193, "a118": 0.1459, "a119": 0.1458, "a137": 0.1513, "a138": 0.1512, "a139": 0.2006}
    ags = _groups(sorted(gains), chains=(["a118", "a119"], ["a137", "a138", "a139"]))
    assert of.units(sorted(gains), ags) == [["a1"], ["a118", "a119"], ["a137", "a138", "a139"]]
    order = of.ordered(_outliers(gains), sorted(gains), 8, ags)
    assert order == [(["a137", "a138", "a139"], 0.2006), (["a1"], 0.193), (["a118", "a119"], 0.1459)]


def _additive(costs: dict[str, float], line: float, seen: list):
    def time_plan(acts):
        seen.append(sorted(acts))
        ratio = 1.0 + sum(costs[k] for k in acts)
        return {"ratio": ratio, "within": ratio <= line, "note": {"line": line}}
    return time_plan


def test_the_longest_prefix_within_the_line_by_bisection():
    """Six outliers whose floats cost 1-3 % each (additive): all six 1.14x, line 1.07. The prefix by gain
    a139, a1, a137 costs 1.06x, with a138 1.08x: the first three kept, in two timings (k = 3, 4; at most
    ceil(log2 6) = 3)."""
    gains = {"a1": 0.193, "a118": 0.1459, "a119": 0.1458, "a137": 0.1513, "a138": 0.1512, "a139": 0.2006}
    costs = {"a1": 0.02, "a118": 0.03, "a119": 0.03, "a137": 0.01, "a138": 0.02, "a139": 0.03}
    chosen = dict.fromkeys(gains, 32)
    seen = []
    fb = of.fallback({}, chosen, _outliers(gains), sorted(gains), 8, _groups(gains),
                     _additive(costs, 1.07, seen))
    assert fb["kept"] == ["a139", "a1", "a137"] and fb["given_up"] == ["a138", "a118", "a119"]
    assert fb["acts"] == {"a139": 32, "a1": 32, "a137": 32} and abs(fb["ratio"] - 1.06) < 1e-9
    assert len(seen) == 2 and [t["within"] for t in fb["tried"]] == [True, False]
    assert abs(fb["gain_kept"] - (0.2006 + 0.193 + 0.1513)) < 1e-9


def test_no_prefix_within_the_line_keeps_the_allowance_choice():
    """Even the best single costs more than the line allows: no plan ("acts" None), the timings tried kept;
    the allowance's own choice (a16 at A16) is in every prefix timed."""
    gains = {"a1": 0.2, "a2": 0.1, "a3": 0.05}
    seen = []
    fb = of.fallback({"a16": 16}, dict.fromkeys(gains, 32), _outliers(gains), sorted(gains), 8,
                     _groups(gains), _additive({"a1": 0.2, "a2": 0.2, "a3": 0.2, "a16": 0.0}, 1.07, seen))
    assert fb["acts"] is None and fb["kept"] == [] and len(fb["tried"]) == 1
    assert seen == [["a1", "a16"]]


def test_a_single_outlier_has_no_prefix_to_time():
    seen = []
    fb = of.fallback({}, {"a1": 32}, _outliers({"a1": 0.2}), ["a1"], 8, _groups(["a1"]),
                     _additive({"a1": 0.0}, 1.07, seen))
    assert fb["acts"] is None and seen == []


V5_GAINS = {"a1": 0.193, "a118": 0.1459, "a119": 0.1458, "a137": 0.1513, "a138": 0.1512, "a139": 0.2006}
V5_CHAINS = (["a118", "a119"], ["a137", "a138", "a139"])
V5_PRICE = {"a1": 0.0078, "a118": 0.026, "a119": 0.026, "a137": 0.013, "a138": 0.013, "a139": 0.014}


def _probe(losses: dict[frozenset, float]):
    """A probe loss per set of float groups (every chain whole)."""
    return lambda acts: losses[frozenset(k for k, a in acts.items() if a == 32)]


def test_the_probe_orders_the_units_by_what_they_buy_in_the_chosen_plan():
    """PP-OCRv5 rec's probe losses (session 25): the screen ranks the a118 chain last, the chosen plan
    without it measures 1.29 (worse than all-A8, 1.09): it goes first; the six at 1.10x, the line 1.07 ->
    the a118 chain alone (1.052x) is kept, the a137 chain (gain 0.20) and a1 (0.06) are given up."""
    u118, u137, a1 = frozenset(V5_CHAINS[0]), frozenset(V5_CHAINS[1]), frozenset(["a1"])
    losses = {frozenset(): 1.095, u118 | u137 | a1: 0.567, u118 | u137: 0.623, u137 | a1: 1.292,
              u118 | a1: 0.770, u118: 0.770}
    seen = []
    fb = of.fallback({}, dict.fromkeys(V5_GAINS, 32), _outliers(V5_GAINS), sorted(V5_GAINS), 8,
                     _groups(sorted(V5_GAINS), V5_CHAINS), _additive(V5_PRICE, 1.07, seen), _probe(losses))
    assert fb["gain"] == "probe" and fb["kept"] == ["a118", "a119"]
    assert fb["given_up"] == ["a137", "a138", "a139", "a1"] and abs(fb["ratio"] - 1.052) < 1e-9
    assert fb["probe"]["without"]["a118,a119"] == 1.292 and fb["probe"]["prefix"] == {"1": 0.770, "2": 0.623}
    # by the screen's order: the a137 chain and a1 (1.048x) kept, the a118 chain given up
    screened = of.fallback({}, dict.fromkeys(V5_GAINS, 32), _outliers(V5_GAINS), sorted(V5_GAINS), 8,
                           _groups(sorted(V5_GAINS), V5_CHAINS), _additive(V5_PRICE, 1.07, []))
    assert screened["gain"] == "screened" and screened["kept"] == ["a137", "a138", "a139", "a1"]


def test_a_prefix_measured_no_better_than_the_allowance_choice_is_not_timed():
    """The first unit alone measures worse than the allowance's choice (all-base): only the two-unit
    prefix is a candidate, and it is beyond the line -> no plan, one timing."""
    gains = {"a1": 0.2, "a2": 0.1, "a3": 0.05}
    losses = {frozenset(): 1.0, frozenset(gains): 0.5, frozenset(["a2", "a3"]): 0.9,
              frozenset(["a1", "a3"]): 0.8, frozenset(["a1", "a2"]): 0.7, frozenset(["a1"]): 1.2}
    seen = []
    fb = of.fallback({}, dict.fromkeys(gains, 32), _outliers(gains), sorted(gains), 8, _groups(gains),
                     _additive({"a1": 0.05, "a2": 0.05, "a3": 0.01}, 1.07, seen), _probe(losses))
    assert fb["probe"]["prefix"] == {"1": 1.2, "2": 0.7} and seen == [["a1", "a2"]] and fb["acts"] is None

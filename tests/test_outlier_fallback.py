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

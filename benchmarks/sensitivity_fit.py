"""Extrapolated sensitivity widths (dfq_onnx/sensitivity/widths.py) against a full table, one model.

    python benchmarks/sensitivity_fit.py MODEL [--input-shape x:1,3,48,320] [--budgets 4.5,6]
                                         [--cache-dir DIR] [--full-table TABLE.json]

Builds the compile state of `dfq-onnx quantize MODEL --avg-weight-bits B` up to ScoreSensitivity (the
default pipeline: synthetic samples, calibration, range floors), then
  - the full table: every group at every score width (today's cost: G x K configurations), or the
    sensitivity cache entry `--full-table` (a table JSON written by an earlier full compile);
  - the extrapolated table from it: each group's lowest width and anchor taken from the full table,
    the other widths extrapolated by `widths.fill` from the weights' noise power (as the compile does,
    on the shrunk values: the exponent is fitted on them, not on the unshrunk terms);
  - per extrapolated width: groups where both are non-zero, the median |log10(extrapolated /
    measured)|, the share within a factor 2, and the groups where exactly one of the two is 0;
  - per budget: the ILP plan (singles, as `--allocator ilp`) from each table, its predicted loss and its
    loss measured on the probe (the scoring samples), and how many groups the two plans set apart.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_info, markdown_table  # noqa: E402
from dfq_onnx.passes.allocate import build_problem  # noqa: E402
from dfq_onnx.passes.sensitivity import PlanMeter, ScoreSensitivity, prepare, scoring_data  # noqa: E402

from dfq_onnx.allocation.ilp import solve  # noqa: E402
from dfq_onnx.allocation.problem import Budget  # noqa: E402
from dfq_onnx.core import candidates, ir  # noqa: E402
from dfq_onnx.core.options import QuantizeOptions  # noqa: E402
from dfq_onnx.core.pass_base import run_passes  # noqa: E402
from dfq_onnx.core.report import Report  # noqa: E402
from dfq_onnx.core.state import CompileState  # noqa: E402
from dfq_onnx.core.target import load_target  # noqa: E402
from dfq_onnx.pipeline import default_pipeline  # noqa: E402
from dfq_onnx.sensitivity.table import SensitivityTable  # noqa: E402
from dfq_onnx.sensitivity.widths import fill, ladder, noise_powers  # noqa: E402


def state_before_scoring(model: str, shapes: dict, budget: float, cache_dir: str | None):
    opts = QuantizeOptions(avg_weight_bits=budget, input_shapes=shapes, cache_dir=cache_dir,
                           progress=False)
    profile = load_target("ort-cpu")
    source = ir.load_model(model)
    state = CompileState(graph=None, target=profile, options=opts, report=Report(),
                         model_hash=ir.model_hash(source), source=source)
    passes = default_pipeline(profile, opts)
    i = next(k for k, p in enumerate(passes) if isinstance(p, ScoreSensitivity))
    run_passes(passes[:i], state)
    return state, passes[i].options


def extrapolated(state, table: SensitivityTable, options) -> SensitivityTable:
    """The table the compile's rule gives, from the full table's shrunk values at the measured widths
    (up the ladder while the last one is not 0)."""
    act = table.base[1]
    bits = tuple(sorted(c[0] for c in table.candidates if not candidates.is_form(c)))
    steps = ladder(bits, options.base_bits)
    below = [b for b in bits if b < options.base_bits]
    anchor = below[len(below) // 2]
    static = [g for g in state.groups if g.id in table.singles and (steps[0], act) in table.singles[g.id]]
    noise = noise_powers(state.graph, state.spec, static, bits, state.target)
    singles = dict(table.singles)
    for g in static:
        s = table.singles[g.id]
        measured = {}
        for b in steps:
            measured[b] = np.full(3, s[(b, act)])
            if s[(b, act)] == 0.0:
                break
        vec = fill(measured, noise[g.id], bits, anchor)
        singles[g.id] = {**s, **{(b, act): float(vec[b][0]) for b in bits}}
    return dataclasses.replace(table, singles=singles)


def fit_rows(full: SensitivityTable, sparse: SensitivityTable, name: str) -> list:
    rows = []
    for c in full.candidates:
        a = np.array([full.singles[g][c] for g in full.singles if c in full.singles[g]])
        b = np.array([sparse.singles[g][c] for g in full.singles if c in full.singles[g]])
        if np.array_equal(a, b):
            continue
        both = (a > 0) & (b > 0)
        err = np.abs(np.log10(b[both] / a[both]))
        rows.append([name, candidates.name(c), len(a), int(both.sum()),
                     f"{np.median(err):.3f}" if both.any() else "-",
                     f"{np.mean(err <= np.log10(2)):.2f}" if both.any() else "-",
                     int(((a > 0) != (b > 0)).sum()), f"{a.sum():.4g}", f"{b.sum():.4g}"])
    return rows


def plan_rows(state, full, sparse, budgets, name: str) -> list:
    rows = []
    for budget in budgets:
        plans = {}
        for label, table in (("full", full), ("extrapolated", sparse)):
            state.sensitivity = table
            a = solve(build_problem(state), Budget(avg_weight_bits=budget), use_pairs=False)
            measured = state.meter({g: candidates.key(c) for g, c in a.choice.items()})
            plans[label] = a.choice
            hist = np.bincount([c[0] for c in a.choice.values()], minlength=9)
            rows.append([name, budget, label, f"{full.reference_loss + a.predicted_loss:.4g}",
                         f"{measured:.4g}", " ".join(f"{k}:{hist[k]}" for k in range(9) if hist[k])])
        rows[-1].append(sum(plans["full"][g] != plans["extrapolated"][g] for g in plans["full"]))
        rows[-2].append("")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--input-shape", action="append", default=[])
    ap.add_argument("--budgets", default="4.5,6")
    ap.add_argument("--cache-dir")
    ap.add_argument("--full-table", help="a full sensitivity table JSON (skips the full scoring)")
    ap.add_argument("--save-full", help="write the full table JSON here")
    args = ap.parse_args()
    shapes = {s.split(":")[0]: tuple(int(d) for d in s.split(":")[1].split(",")) for s in args.input_shape}
    budgets = [float(b) for b in args.budgets.split(",")]
    name = Path(args.model).stem
    start = time.perf_counter()
    state, options = state_before_scoring(args.model, shapes, budgets[0], args.cache_dir)
    prep = time.perf_counter() - start
    samples, labels = scoring_data(state, options)
    full_opts = dataclasses.replace(options, extrapolate=False, use_cache=False)
    if args.full_table:
        full, scoring = SensitivityTable.from_json(Path(args.full_table).read_text()), None
        state.meter = PlanMeter(state, full_opts, samples, labels)
    else:
        scoring = prepare(state, full_opts, samples, labels).run()
        full = scoring.table()
        state.meter = PlanMeter(state, full_opts, samples, labels, scoring)
    scored = time.perf_counter() - start - prep
    if args.save_full:
        Path(args.save_full).write_text(full.to_json())
    sparse = extrapolated(state, full, options)
    print(machine_info())
    print(f"\n{name}: {len(full.groups)} groups, state {prep:.0f} s, full table {scored:.0f} s "
          f"({full.evaluations} evaluations{', from ' + args.full_table if args.full_table else ''})\n")
    print(markdown_table(["model", "width", "groups", "both > 0", "median |log10 ratio|", "within 2x",
                          "one is 0", "sum measured", "sum extrapolated"], fit_rows(full, sparse, name)))
    print()
    print(markdown_table(["model", "budget", "table", "predicted", "measured (probe)", "widths: groups",
                          "groups differing"], plan_rows(state, full, sparse, budgets, name)))
    print(json.dumps({"seconds": round(time.perf_counter() - start, 1)}))


if __name__ == "__main__":
    main()

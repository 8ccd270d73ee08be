"""Sensitivity scoring acceptance (issue 4): cost of an evaluation, and faithfulness of the predictions.

    python benchmarks/sensitivity.py [--models resnet20,resnet56] [--configs 30] [--samples 256]
                                     [--metrics kl,ce] [--no-synthetic] [--rounds 10]

(a) Cost on ResNet-56: one probe evaluation (random {2,4,8} configuration) vs one plain FP32 ORT
    forward of the same batch (`samples` real calibration images), same session options, measured in
    interleaved rounds (median, and min as the least-disturbed figure); plus evaluations, ORT runs and
    wall time of each scoring phase.
(b) Faithfulness on ResNet-20/56: `configs` random configurations (default 100; the first 30 are the
    acceptance's draw of 30 and are reported on their own too) -- per configuration fractions
    f2 ~ U(0, 0.2), f4 ~ U(0, 0.6), each group independently W2 (f2), W4 (f4) or W8, all A8 -- are
    emitted with EmitQDQ and evaluated on the 10,000 CIFAR-10 test images; Spearman correlation of the
    measured top-1 drop with the predicted loss (singles only; singles + pairs, with and without the
    noise shrinkage; base loss + in-context terms; and the metric of the whole configuration measured
    on the probe, which assumes no additivity), and a paired bootstrap over the configurations of the
    difference "singles + pairs" minus "singles" (mean, 90 % interval, share of resamples above 0),
    for scoring samples = `samples` real calibration images (metrics `--metrics`) and the synthetic
    samples of `passes/synthesize.py` (when present).
The target is ort-cpu with W2A8 made legal: 2-bit weights (values in [-1, 1]) stored in int4 containers.
Activation ranges are the default analytic (BN-statistics) ranges, identical for every configuration.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import importlib.util
import logging
import statistics
import sys
import time
from pathlib import Path
from types import MappingProxyType

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHARED_DATA, load_cifar, machine_info, markdown_table, require_shared  # noqa: E402
from dfq_onnx.passes.analytic_ranges import AnalyticRanges  # noqa: E402
from dfq_onnx.passes.calibrate import Calibrate, noise_inputs  # noqa: E402
from dfq_onnx.passes.emit_qdq import EmitQDQ  # noqa: E402
from dfq_onnx.passes.fold_bn import FoldBatchNorm  # noqa: E402
from dfq_onnx.passes.normalize import Normalize  # noqa: E402
from dfq_onnx.passes.quant_groups import FindQuantGroups  # noqa: E402
from dfq_onnx.passes.sensitivity import SensitivityOptions, prepare  # noqa: E402

from dfq_onnx.backends import runtime  # noqa: E402
from dfq_onnx.core import ir  # noqa: E402
from dfq_onnx.core.options import QuantizeOptions  # noqa: E402
from dfq_onnx.core.pass_base import run_passes  # noqa: E402
from dfq_onnx.core.report import Report  # noqa: E402
from dfq_onnx.core.state import BitPlan, CompileState  # noqa: E402
from dfq_onnx.core.target import load_target  # noqa: E402
from dfq_onnx.sensitivity.probe import Probe, build_probe, session  # noqa: E402

log = logging.getLogger("benchmarks.sensitivity")
BITS = (2, 4, 8)


def bench_target():
    t = load_target("ort-cpu")
    if (2, 8) in t.pairs:      # ort-cpu has 2-bit weights in int4 storage since the mixed-precision commit
        return t
    dtypes = MappingProxyType({**t.weight_dtypes, 2: "int4"})
    return dataclasses.replace(t, name="ort-cpu+w2", weight_dtypes=dtypes, pairs=t.pairs + ((2, 8),))


def make_state(name: str) -> CompileState:
    return make_state_from(SHARED_DATA / f"{name}_cifar10.onnx")


def make_state_from(path) -> CompileState:
    source = ir.load_model(path)
    state = CompileState(graph=None, target=bench_target(), options=QuantizeOptions(progress=False),
                         report=Report(), model_hash=ir.model_hash(source), source=source)
    passes = [Normalize(21), FoldBatchNorm(), FindQuantGroups(), AnalyticRanges(), Calibrate()]
    return run_passes(passes, state)


def emit(state: CompileState, config: dict[str, int]):
    s = copy.copy(state)
    s.graph, s.report = ir.copy_graph(state.graph), Report()
    s.plan = BitPlan({g.id: (config.get(g.id, 8), 8) for g in state.groups})
    EmitQDQ().run(s)
    return ir.to_model(s.graph, ir_version=ir.min_ir_version(s.graph.opset))


def top1(model, x, y, batch: int = 500) -> float:
    sess = session(model)
    logits = runtime.run_batched(sess, {"input": x}, batch)[0]
    return float((logits.argmax(1) == y).mean() * 100.0)


def random_configs(groups: list[str], n: int, seed: int = 0) -> list[dict[str, int]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        f2, f4 = rng.uniform(0, 0.2), rng.uniform(0, 0.6)
        out.append({g: int(rng.choice(BITS, p=[f2, f4, 1 - f2 - f4])) for g in groups})
    return out


def ranks(a: np.ndarray) -> np.ndarray:
    """Ranks with ties averaged."""
    order = np.argsort(a, kind="stable")
    r = np.empty(len(a))
    r[order] = np.arange(len(a), dtype=float)
    for v in np.unique(a):
        tie = a == v
        r[tie] = r[tie].mean()
    return r


def spearman(a, b) -> float:
    ra, rb = ranks(np.asarray(a, float)), ranks(np.asarray(b, float))
    return float(np.corrcoef(ra, rb)[0, 1])


def paired_bootstrap(base, other, truth, draws: int = 2000, seed: int = 0) -> tuple[float, ...]:
    """Resample the configurations with replacement: spearman(other) - spearman(base) per resample ->
    (mean, 5th percentile, 95th percentile, share > 0)."""
    rng = np.random.default_rng(seed)
    base, other, truth = (np.asarray(a, float) for a in (base, other, truth))
    diffs = []
    for _ in range(draws):
        i = rng.integers(0, len(truth), len(truth))
        if np.ptp(truth[i]) > 0 and np.ptp(base[i]) > 0 and np.ptp(other[i]) > 0:
            diffs.append(spearman(other[i], truth[i]) - spearman(base[i], truth[i]))
    d = np.array(diffs)
    return float(d.mean()), float(np.percentile(d, 5)), float(np.percentile(d, 95)), float((d > 0).mean())


def cost(state: CompileState, x: np.ndarray | dict, rounds: int) -> list:
    """Interleaved timing on the same batch: a plain FP32 forward; a whole-probe evaluation of a random
    {2,4,8} configuration; a segmented single (one random group at 2 bits, the scorer's common case,
    from the cached prefix of its segment)."""
    feeds = x if isinstance(x, dict) else {"input": x}
    n = len(next(iter(feeds.values())))
    t0 = time.perf_counter()
    pm = build_probe(state.graph, state.spec, state.groups, state.ranges, state.target, BITS, 8)
    probe = Probe(pm)
    build = time.perf_counter() - t0
    t0 = time.perf_counter()
    seg = Probe(pm, segmented=True)
    seg_build = time.perf_counter() - t0
    fp32 = runtime.session(ir.to_model(ir.copy_graph(state.graph),
                                       ir_version=ir.min_ir_version(state.graph.opset)))
    configs = random_configs(list(pm.selects), rounds + 1, seed=1)
    rng = np.random.default_rng(2)
    singles = [{g: 2} for g in rng.choice(list(pm.selects), rounds)]
    times = {"fp32": [], "probe": [], "single": []}
    fp32.run(None, feeds)
    probe.run(configs[-1], feeds)
    seg.run_batch({}, feeds, key=0)
    for config, single in zip(configs[:rounds], singles):
        for k, f in (("fp32", lambda: fp32.run(None, feeds)),
                     ("probe", lambda c=config: probe.run(c, feeds)),
                     ("single", lambda c=single: seg.run_batch(c, feeds, key=0))):
            t = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t)
    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    return [n, round(build, 2), round(seg_build, 2), len(seg.runner.segments),
            round(pm.model.ByteSize() / 2**20, 1), med["fp32"], med["probe"], med["probe"] / med["fp32"],
            med["single"], med["single"] / med["fp32"]]


def synthetic_samples(state: CompileState, n: int):
    if importlib.util.find_spec("dfq_onnx.passes.synthesize") is None:
        return None
    from dfq_onnx.passes.synthesize import SynthesisOptions, synthesize

    result = synthesize(state.graph, state.bn_stats, SynthesisOptions(samples=n, progress=False),
                        state.model_hash)
    log.info("synthetic: %d samples (%s), %.1fs, cache hit %s", n, result.objective, result.seconds,
             result.cache_hit)
    return result.inputs, result.labels


def predictors(scoring, table, table0, config) -> dict[str, float]:
    cand = {g: (b, 8) for g, b in config.items()}
    ctx = (table.base_loss + sum(table.incontext[g][c] for g, c in cand.items())
           if all(table.incontext.values()) else float("nan"))
    damaging = table.predict(cand, pairs=False) + sum(
        max(terms.get((cand[g], cand[h]), 0.0), 0.0) for (g, h), terms in table.pairs.items()
        if g in cand and h in cand)
    return {"singles": table.predict(cand, pairs=False), "singles+pairs": table.predict(cand),
            "singles+pairs (C > 0, as the ILP)": damaging,
            "singles+pairs (no shrink)": table0.predict(cand), "in-context": ctx,
            "probe metric": float(scoring.evaluator.loss(config)[0])}


def faithfulness(name: str, args, cost_rows: list, phase_rows: list, faith_rows: list,
                 boot_rows: list) -> None:
    state = make_state(name)
    x_test, y_test = load_cifar("test")
    x_cal, y_cal = load_cifar("calib", args.samples)
    fp32_model = ir.to_model(ir.copy_graph(state.graph), ir_version=ir.min_ir_version(state.graph.opset))
    fp32 = top1(fp32_model, x_test, y_test)
    if name == "resnet56":
        cost_rows.append([name, *cost(state, x_cal, args.rounds)])
    groups = [g.id for g in state.groups if g.layers]
    configs = random_configs(groups, args.configs, seed=0)
    drops = []
    for i, config in enumerate(configs):
        drops.append(fp32 - top1(emit(state, config), x_test, y_test))
        counts = [sum(b == k for b in config.values()) for k in (2, 4)]
        log.info("%s config %d: W2 %d, W4 %d groups, drop %.2f", name, i, *counts, drops[-1])
    sets = [(f"real {args.samples}, {m}", {"input": x_cal}, y_cal, m) for m in args.metrics]
    synth = None if args.no_synthetic else synthetic_samples(state, args.synthetic_samples)
    if synth is not None:
        sets.append((f"synthetic {args.synthetic_samples}, auto", synth[0], synth[1], "auto"))
    for label, samples, labels, metric in sets:
        opts = SensitivityOptions(weight_bits=BITS, metric=metric, use_cache=False, progress=False,
                                  incontext=not args.no_incontext)
        scoring = prepare(state, opts, samples, labels).run()
        table, table0 = scoring.table(), scoring.table(shrink=0.0)
        for phase, st in table.phases.items():
            phase_rows.append([name, label, phase, st["evaluations"], st["forward_passes"], st["seconds"],
                               st["seconds"] / max(st["evaluations"], 1)])
        preds = [predictors(scoring, table, table0, c) for c in configs]
        col = {k: np.array([p[k] for p in preds]) for k in preds[0]}
        first = min(30, len(configs))
        faith_rows.append([name, label, f"{min(drops):.1f}..{max(drops):.1f}", len(table.pairs),
                           *("-" if np.isnan(v).any() else
                             f"{spearman(v[:first], drops[:first]):.3f} / {spearman(v, drops):.3f}"
                             for v in col.values())])
        for k in ("singles+pairs", "singles+pairs (C > 0, as the ILP)"):
            mean, lo, hi, share = paired_bootstrap(col["singles"], col[k], drops)
            boot_rows.append([name, label, k, len(configs), f"{mean:+.4f}", f"[{lo:+.4f}, {hi:+.4f}]", share])
        log.info("%s %s done: %s", name, label, faith_rows[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="resnet20,resnet56")
    ap.add_argument("--configs", type=int, default=100)
    ap.add_argument("--samples", type=int, default=256)
    ap.add_argument("--synthetic-samples", type=int, default=256)
    ap.add_argument("--metrics", default="kl,ce", help="metrics scored on the real samples")
    ap.add_argument("--no-synthetic", action="store_true")
    ap.add_argument("--no-incontext", action="store_true", help="skip the in-context phase (column: nan)")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--cost-models", default="", help="extra ONNX models (paths) for the cost table only")
    ap.add_argument("--cost-batch", type=int, default=32, help="batch of the extra cost models (noise)")
    args = ap.parse_args()
    args.metrics = args.metrics.split(",")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    require_shared()
    cost_rows, phase_rows, faith_rows, boot_rows = [], [], [], []
    for path in filter(None, args.cost_models.split(",")):
        state = make_state_from(path)
        feeds = noise_inputs(state.graph, args.cost_batch, 0)
        cost_rows.append([Path(path).stem, *cost(state, feeds, args.rounds)])
        log.info("cost %s: %s", path, cost_rows[-1])
    for name in filter(None, args.models.split(",")):
        faithfulness(name, args, cost_rows, phase_rows, faith_rows, boot_rows)
    print(f"\n{machine_info()}\n")
    print("### (a) Cost of one evaluation vs a plain FP32 forward (same batch, interleaved rounds)\n")
    print(markdown_table(["model", "batch", "probe build s", "segments build s", "segments", "probe MB",
                          "FP32 ms", "whole-probe config ms", "ratio", "segmented single ms", "ratio"],
                         cost_rows))
    print("\n### Scoring phases\n")
    print(markdown_table(["model", "scoring samples, metric", "phase", "evaluations", "ORT runs", "wall s",
                          "s / evaluation"], phase_rows))
    print(f"\n### (b) Spearman correlation with the measured top-1 drop (first 30 / all {args.configs} "
          "random configs)\n")
    print(markdown_table(["model", "scoring samples, metric", "drop range (pts)", "pairs", "singles",
                          "singles+pairs", "singles+pairs (C > 0, as the ILP)", "singles+pairs (no shrink)",
                          "in-context", "probe metric"],
                         faith_rows))
    print("\n### (b) Paired bootstrap over the configurations: Spearman(singles + pairs) - "
          "Spearman(singles)\n")
    print(markdown_table(["model", "scoring samples, metric", "pairs", "configs", "mean difference",
                          "90 % interval", "share > 0"], boot_rows))


if __name__ == "__main__":
    main()

"""Which output metric ranks mixed-precision configurations like their top-1 drop (issue 4 side study).

    python benchmarks/sensitivity_metrics.py [--model resnet20] [--configs 100] [--samples 1000]

The random {2,4,8}-bit configurations of benchmarks/sensitivity.py are emitted and evaluated on the 10,000
CIFAR-10 test images (top-1 drop vs FP32). On the probe, with `--samples` real calibration images, the
outputs of every configuration, every single (one group at 2/4/8 bits) and every pair within 2 hops (at
{2,4} x {2,4}) are kept, and each metric is computed from them in numpy: the Spearman correlation with the
measured drop of (a) the metric of the whole configuration (its ceiling: no additivity assumed), (b) the
additive prediction from singles, (c) singles + pairs, (d) singles + damaging pairs only (C > 0).
Bounded metrics (js, hellinger, tv, flip) are also summed in -log(1 - m) form (independent damage
multiplies survival). Spearman on the first 30 configurations / on all.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import sensitivity as bench  # noqa: E402
from common import load_cifar, machine_info, markdown_table, require_shared  # noqa: E402
from dfq_onnx.passes.sensitivity import SensitivityOptions, prepare  # noqa: E402

from dfq_onnx.core import (
    ir,  # noqa: E402
    numerics,  # noqa: E402
)

BOUND = {"js": np.log(2.0), "hellinger": 1.0, "tv": 1.0, "flip": 1.0}


def metric(kind: str, ref: np.ndarray, test: np.ndarray) -> float:
    if kind == "kl":
        return numerics.kl_softmax(ref, test, axis=-1)
    if kind == "mse":
        return numerics.mse(ref, test)
    p, q = numerics.softmax(ref), numerics.softmax(test)
    lp, lq = np.log(np.maximum(p, 1e-30)), np.log(np.maximum(q, 1e-30))
    if kind == "js":
        lm = np.log((p + q) / 2)
        v = 0.5 * (p * (lp - lm)).sum(-1) + 0.5 * (q * (lq - lm)).sum(-1)
    elif kind == "hellinger":
        v = 1.0 - np.sqrt(p * q).sum(-1)
    elif kind == "tv":
        v = 0.5 * np.abs(p - q).sum(-1)
    elif kind == "flip":
        v = (ref.argmax(-1) != test.argmax(-1)).astype(float)
    else:
        raise ValueError(kind)
    return float(v.mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet20")
    ap.add_argument("--configs", type=int, default=100)
    ap.add_argument("--samples", type=int, default=1000)
    args = ap.parse_args()
    require_shared()
    state = bench.make_state(args.model)
    groups = [g.id for g in state.groups if g.layers]
    configs = bench.random_configs(groups, args.configs, seed=0)
    x_test, y_test = load_cifar("test")
    graph = ir.copy_graph(state.graph)
    fp32 = bench.top1(ir.to_model(graph, ir_version=ir.min_ir_version(graph.opset)), x_test, y_test)
    drops = np.array([fp32 - bench.top1(bench.emit(state, c), x_test, y_test) for c in configs])
    x_cal, _ = load_cifar("calib", args.samples)
    opts = SensitivityOptions(weight_bits=(2, 4, 8), metric="kl", use_cache=False, progress=False,
                              incontext=False)
    scoring = prepare(state, opts, {"input": x_cal}, None)
    ev = scoring.evaluator
    outputs = {}

    def run(config):
        key = frozenset(config.items())
        if key not in outputs:
            outputs[key] = ev.outputs(config)[0]
        return outputs[key]

    base = run({})
    bits, low = (2, 4, 8), (2, 4)
    rows, first = [], min(30, len(configs))
    for kind in ("kl", "js", "hellinger", "tv", "flip", "mse"):
        for logform in ((False, True) if kind in BOUND else (False,)):
            def m(config, kind=kind, logform=logform):
                v = metric(kind, base, run(config))
                return -np.log(max(1.0 - v / BOUND[kind], 1e-12)) if logform else v
            single = {g: dict(zip(bits, np.maximum.accumulate([m({g: b}) for b in bits[::-1]])[::-1]))
                      for g in groups}
            pair = {(g, h): {(c, d): m({g: c, h: d}) - single[g][c] - single[h][d] for c in low for d in low}
                    for g, h in scoring.pairs}

            def predict(config, use, single=single, pair=pair):
                s = sum(single[g][b] for g, b in config.items())
                return s + sum(use(t[(config[g], config[h])]) for (g, h), t in pair.items()
                               if config[g] in low and config[h] in low)
            cols = {"whole": [m(c) for c in configs],
                    "singles": [predict(c, lambda t: 0.0) for c in configs],
                    "singles+pairs": [predict(c, lambda t: t) for c in configs],
                    "singles+pairs C>0": [predict(c, lambda t: max(t, 0.0)) for c in configs]}
            rows.append([kind + (" (-log(1-m))" if logform else ""),
                         *(f"{bench.spearman(v[:first], drops[:first]):.3f} / {bench.spearman(v, drops):.3f}"
                           for v in map(np.array, cols.values()))])
    print(f"\n{machine_info()}\n")
    print(f"### {args.model}: Spearman with the measured top-1 drop, first {first} / all {len(configs)} "
          f"configurations ({args.samples} real calibration images on the probe)\n")
    print(markdown_table(["metric", "whole configuration", "singles", "singles + pairs",
                          "singles + pairs (C > 0)"], rows))


if __name__ == "__main__":
    main()

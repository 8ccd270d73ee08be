"""ILP solve time on a generated problem (issue 5): 500 groups x 4 candidates, pairs within 3 hops.

    python benchmarks/ilp_scale.py [--groups 500] [--hops 3]

Generated like real tables: the loss of group g at w weight bits is s_g * 4^-w (quantization noise
power), sensitivities s_g log-normal; pair terms are +-`scale` times the geometric mean of the two
singles (0.2: typical; 0.5: adversarial, interactions as large as the singles).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_info, markdown_table  # noqa: E402

from dfq_onnx.allocation.ilp import solve  # noqa: E402
from dfq_onnx.allocation.problem import Budget, Problem  # noqa: E402

CANDS = ((2, 8), (3, 8), (4, 8), (8, 8))


def generate(n: int, hops: int, scale: float, seed: int = 0) -> Problem:
    rng = np.random.default_rng(seed)
    groups = tuple(f"g{i}" for i in range(n))
    s = np.exp(rng.normal(0.0, 1.5, n))
    loss = {g: {c: float(s[i] * 4.0 ** (-c[0]) * 1e3) for c in CANDS} for i, g in enumerate(groups)}
    params = {g: int(rng.integers(1000, 100000)) for g in groups}
    pairs = {}
    for i in range(n):
        for j in range(i + 1, min(n, i + hops + 1)):
            pairs[(groups[i], groups[j])] = {
                (c, d): float(rng.normal() * scale * np.sqrt(loss[groups[i]][c] * loss[groups[j]][d]))
                for c in CANDS for d in CANDS}
    return Problem(groups, {g: CANDS for g in groups}, loss, params, pairs=pairs)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--groups", type=int, default=500)
    ap.add_argument("--hops", type=int, default=3)
    args = ap.parse_args()
    rows = []
    for scale in (0.2, 0.5):
        p = generate(args.groups, args.hops, scale)
        for use_pairs in (False, True):
            start = time.perf_counter()
            a = solve(p, Budget(avg_weight_bits=4.0), use_pairs=use_pairs, time_limit=120)
            kind = "pairs" if use_pairs else "singles"
            rows.append([args.groups, len(p.pairs) if use_pairs else 0, scale, kind, a.status,
                         f"{a.solver_seconds:.2f}", f"{time.perf_counter() - start:.2f}"])
    print(machine_info())
    print()
    print(markdown_table(["groups", "pair terms", "pair scale", "objective", "status", "solver s", "total s"],
                         rows))


if __name__ == "__main__":
    main()

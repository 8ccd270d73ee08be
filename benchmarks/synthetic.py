"""Synthetic calibration acceptance (issue 3): the whole table in one run, ORT quantize_static beside it.

    python benchmarks/synthetic.py [--models resnet20,resnet56] [--seeds 0,1,2] [--bits 8,4]
                                   [--noise-seeds 0,1,2,3,4] [--real-subsets 4] [--no-ort] [--views 8]

Per model: synthesis of 64 samples per seed (no cache: timed), its ORT forward passes and rows, and
forward passes per second vs a plain ORT forward of the model on the same number of rows (the plain
forward is timed before and after each search, median); the BN-statistics loss (objective A) of
Gaussian noise, the starting random fields, the synthetic samples and real images; top-1 on the
10,000 CIFAR-10 test images of dfq-onnx uniform W{bits}A8 with activation ranges from Gaussian noise
(64 samples), analytic (BN statistics), synthetic (each seed), real (first 64 and all 1,000 images
of cifar10_calib.npz), and ORT quantize_static (QDQ, per-channel, MinMax, with quant_pre_process) on
the 1,000 real images. The last column says whether the synthetic top-1 meets the acceptance:
within 0.3 points of real (1,000) at W8A8, at least half of the noise-vs-real gap recovered at W4A8,
the noise top-1 being the mean over `--noise-seeds` (one seed is one draw of a noisy baseline).
`--real-subsets K` adds K disjoint real subsets of `--samples` images (the sampling spread of real
calibration); a summary gives mean, sample std, min and max per group. The synthetic rows calibrate
through the default pipeline (`calib="synthetic"`, the searched samples taken from a per-run cache).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import onnx  # noqa: E402
from common import (  # noqa: E402
    SHARED_DATA,
    gaussian_calib,
    load_cifar,
    machine_info,
    markdown_table,
    ort_quantize_static,
    require_shared,
    session,
    top1,
    write_input_npz,
)
from dfq_onnx.passes.fold_bn import FoldBatchNorm  # noqa: E402
from dfq_onnx.passes.normalize import Normalize  # noqa: E402
from dfq_onnx.passes.synthesize import SynthesisOptions, synthesize  # noqa: E402

from dfq_onnx import quantize  # noqa: E402
from dfq_onnx.core import ir  # noqa: E402
from dfq_onnx.core.options import QuantizeOptions  # noqa: E402
from dfq_onnx.core.pass_base import run_passes  # noqa: E402
from dfq_onnx.core.report import Report  # noqa: E402
from dfq_onnx.core.state import CompileState  # noqa: E402
from dfq_onnx.core.target import load_target  # noqa: E402
from dfq_onnx.synth.runner import build_objective  # noqa: E402
from dfq_onnx.synth.search import pink_noise, squash  # noqa: E402


def folded_state(path: Path) -> CompileState:
    source = ir.load_model(path)
    state = CompileState(graph=None, target=load_target("ort-cpu"), options=QuantizeOptions(progress=False),
                         report=Report(), model_hash=ir.model_hash(source), source=source)
    return run_passes([Normalize(), FoldBatchNorm()], state)


def plain_forward_s(sess, x: np.ndarray, repeats: int = 3) -> float:
    """Median seconds of one plain ORT run of the FP32 model on `x`."""
    sess.run(None, {"input": x})
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        sess.run(None, {"input": x})
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def search(state: CompileState, seed: int, samples: int, plain, cache_dir: Path) -> tuple[object, dict]:
    """One synthesis into a fresh cache directory (so it is searched and timed; the quantize calls
    of the accuracy table then read it), with the plain-forward time of its batch before and after."""
    opts = SynthesisOptions(samples=samples, seed=seed, cache_dir=str(cache_dir), progress=False)
    cpu0 = time.process_time()
    result = synthesize(state.graph, state.bn_stats, opts, state.model_hash)
    cpu = time.process_time() - cpu0
    rows_per_call = max(1, round(result.samples_evaluated / result.forward_passes))
    x = np.random.default_rng(0).standard_normal((rows_per_call, 3, 32, 32)).astype(np.float32)
    before_after = [plain_forward_s(plain, x), plain_forward_s(plain, x)]
    plain_s = statistics.median(before_after)
    runs_per_s = result.forward_passes / result.seconds
    return result, {"seconds": result.seconds, "cpu": cpu, "passes": result.forward_passes,
                    "rows": result.samples_evaluated, "rows_per_call": rows_per_call,
                    "runs_per_s": runs_per_s, "plain_per_s": 1.0 / plain_s,
                    "ratio": runs_per_s * plain_s, "loss": (result.loss_start, result.loss_end)}


def bn_losses(state: CompileState, sets: dict[str, np.ndarray]) -> dict[str, float]:
    rng = np.random.default_rng(0)
    any_set = next(iter(sets.values()))
    objective, runner = build_objective("bn", state.graph, state.bn_stats, {"input": (3, 32, 32)},
                                        {"input": any_set}, rng)
    return {k: float(runner.losses(objective, {"input": x}, np.arange(len(x))).mean())
            for k, x in sets.items()}


def accuracy(fp32: Path, calibs: dict[str, tuple[str, int]], bits: list[int], tmp: Path, x_test, y_test,
             x_cal, ort_baseline: bool = True, views: int = 8) -> dict[str, dict[int, float]]:
    acc: dict[str, dict[int, float]] = {}
    for name, (calib, seed) in calibs.items():
        acc[name] = {}
        for wb in bits:
            out = tmp / f"{''.join(c if c.isalnum() else '_' for c in name)}_{wb}.onnx"
            quantize(fp32, output=out, calib=calib, weight_bits=wb, act_bits=8, seed=seed, progress=False,
                     cache_dir=str(tmp / "cache"), synth_views=views)
            acc[name][wb] = top1(out, x_test, y_test)
            print(f"  {name} W{wb}A8: {acc[name][wb]:.2f}", flush=True)
    if not ort_baseline:
        return acc
    acc["ORT quantize_static (real 1000)"] = {}
    for wb in bits:
        out = ort_quantize_static(fp32, tmp / f"ort_{wb}.onnx", {"input": x_cal}, weight_bits=wb)
        acc["ORT quantize_static (real 1000)"][wb] = top1(out, x_test, y_test)
    return acc


def group(acc: dict[str, dict[int, float]], prefix: str, wb: int) -> list[float]:
    return [v[wb] for k, v in acc.items() if k.startswith(prefix)]


def verdict(acc: dict[str, dict[int, float]], name: str, wb: int) -> str:
    if not name.startswith("synthetic"):
        return ""
    real, noise, syn = acc["real (1000)"][wb], statistics.mean(group(acc, "noise", wb)), acc[name][wb]
    if wb == 8:
        return f"{syn - real:+.2f} vs real: {'PASS' if abs(syn - real) <= 0.3 else 'FAIL'}"
    gap = real - noise
    if gap <= 0:
        return f"no gap (noise {noise:.2f} >= real {real:.2f})"
    rec = (syn - noise) / gap
    return f"recovers {rec * 100:.0f}% of {gap:.2f}: {'PASS' if rec >= 0.5 else 'FAIL'}"


def summary(acc: dict[str, dict[int, float]], bits: list[int], samples: int) -> list[str]:
    """Mean, sample std, min, max per group of rows (noise seeds, synthetic seeds, real subsets)."""
    rows = []
    groups = (("noise", "noise"), ("synthetic", "synthetic"), (f"real ({samples}) subsets", "real #"))
    for label, prefix in groups:
        cells = []
        for wb in bits:
            v = group(acc, prefix, wb)
            sd = statistics.stdev(v) if len(v) > 1 else 0.0
            cells.append(f"{statistics.mean(v):.2f} +- {sd:.2f} [{min(v):.2f}, {max(v):.2f}] (n={len(v)})"
                         if v else "")
        rows.append([label] + cells)
    checks = []
    for wb in bits:
        if wb == 8:
            continue
        noise, real = statistics.mean(group(acc, "noise", wb)), acc["real (1000)"][wb]
        syn = group(acc, "synthetic", wb)
        if syn and real > noise:
            need = noise + 0.5 * (real - noise)
            checks.append([f"W{wb}A8", f"{noise:.3f}", f"{real:.2f}", f"{need:.3f}",
                           f"{(statistics.mean(syn) - noise) / (real - noise) * 100:.0f}%",
                           f"{sum(v >= need for v in syn)}/{len(syn)}"])
    out = [markdown_table(["group"] + [f"W{wb}A8" for wb in bits], rows)]
    if checks:
        out += ["", markdown_table(["bits", "noise mean", "real (1000)", "threshold: noise mean + gap / 2",
                                    "synthetic mean recovers", "seeds >= threshold"], checks)]
    return out


def bench(model: str, seeds: list[int], bits: list[int], samples: int, tmp: Path, noise_seeds: list[int],
          real_subsets: int, ort_baseline: bool, views: int = 8) -> list[str]:
    fp32 = SHARED_DATA / f"{model}_cifar10.onnx"
    state = folded_state(fp32)
    x_test, y_test = load_cifar("test")
    x_cal, _ = load_cifar("calib")
    plain = session(fp32)
    results, timing = {}, {}
    for seed in seeds:
        results[seed], timing[seed] = search(state, seed, samples, plain, tmp / "cache")
    start = squash({"x": pink_noise(np.random.default_rng(0), samples, (3, 32, 32))})["x"]
    sets = {"noise N(0,1)": gaussian_calib(samples, seed=0), "start (1/f fields)": start,
            **{f"synthetic s{s}": r.inputs["input"] for s, r in results.items()},
            f"real ({samples})": x_cal[:samples], "real (1000)": x_cal}
    losses = bn_losses(state, sets)
    calibs = {f"noise s{s}": ("noise", s) for s in noise_seeds}
    calibs["analytic"] = ("analytic", 0)
    calibs.update({f"synthetic s{s}": ("synthetic", s) for s in results})
    for k in range(min(real_subsets, len(x_cal) // samples)):
        sub = {"input": x_cal[k * samples:(k + 1) * samples]}
        calibs[f"real #{k} ({samples})"] = (str(write_input_npz(tmp / f"real_{k}.npz", sub)), 0)
    calibs["real (1000)"] = (str(write_input_npz(tmp / "real.npz", {"input": x_cal})), 0)
    acc = accuracy(fp32, calibs, bits, tmp, x_test, y_test, x_cal, ort_baseline, views)
    fp = top1(fp32, x_test, y_test)
    out = [f"\n### {model}: top-1 % on CIFAR-10 test (10,000 images), FP32 {fp:.2f}\n"]
    rows = [[name] + [f"{acc[name][wb]:.2f}" for wb in bits] + [
            "; ".join(v for wb in bits if (v := verdict(acc, name, wb)))] for name in acc]
    out.append(markdown_table(["activation ranges"] + [f"W{wb}A8" for wb in bits] + ["acceptance"], rows))
    out.append(f"\n### {model}: summary over seeds / subsets\n")
    out += summary(acc, bits, samples)
    out.append(f"\n### {model}: BN-statistics loss (objective A, mean per sample)\n")
    out.append(markdown_table(["samples", "loss"], [[k, f"{v:.4f}"] for k, v in losses.items()]))
    out.append(f"\n### {model}: synthesis of {samples} samples (no cache)\n")
    head = ["seed", "wall s", "CPU s", "ORT runs", "rows", "rows/run", "runs/s", "plain runs/s",
            "runs/s vs plain", "loss start -> end"]
    out.append(markdown_table(head, [[s, f"{t['seconds']:.1f}", f"{t['cpu']:.1f}", t["passes"], t["rows"],
                                      t["rows_per_call"], f"{t['runs_per_s']:.2f}", f"{t['plain_per_s']:.2f}",
                                      f"{t['ratio']:.2f}x", f"{t['loss'][0]:.3f} -> {t['loss'][1]:.3f}"]
                                     for s, t in timing.items()]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="resnet20,resnet56")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--bits", default="8,4")
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--noise-seeds", default="0", help="seeds of the Gaussian-noise calibration rows")
    ap.add_argument("--real-subsets", type=int, default=1, help="disjoint real subsets of --samples images")
    ap.add_argument("--no-ort", action="store_true", help="skip the ORT quantize_static rows")
    ap.add_argument("--views", type=int, default=8, help="--synth-views of the synthetic rows (1: samples)")
    args = ap.parse_args()
    require_shared()
    onnx.checker.check_model(onnx.load(SHARED_DATA / "resnet20_cifar10.onnx"))
    seeds = [int(s) for s in args.seeds.split(",")]
    bits = [int(b) for b in args.bits.split(",")]
    print(machine_info())
    print(f"load average at start: {os.getloadavg()}")
    t0 = time.perf_counter()
    for model in args.models.split(","):
        with tempfile.TemporaryDirectory(prefix="bench_synth_") as tmp:
            noise_seeds = [int(s) for s in args.noise_seeds.split(",")]
            for line in bench(model, seeds, bits, args.samples, Path(tmp), noise_seeds, args.real_subsets,
                              not args.no_ort, args.views):
                print(line, flush=True)
    print(f"\nload average at end: {os.getloadavg()}; total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()

"""Bit allocation acceptance (issue 5): every allocator at the same budgets, uniform and ORT beside.

    python benchmarks/allocation.py [--models resnet20,resnet56] [--budgets 3,4,5]
                                    [--allocators uniform,greedy,ilp,ilp-pairs] [--no-e2e]
                                    [--metrics auto,kl] [--gptq] [--weight-clip] [--dither-scoring]

Per model (CIFAR-10 ResNets of ../shared/data), top-1 on the 10,000 test images of:
  - FP32; ORT quantize_static W8A8 and W4A8 (real calibration images, per-channel, quant_pre_process);
  - dfq-onnx at each `--avg-weight-bits` budget with each allocator (A8, the default data-free pipeline:
    analytic activation ranges, synthetic scoring samples; `uniform` is the uniform plan at the budget);
  - the measured loss of each plan on the scoring samples (the probe), and its predicted loss.
End to end: `dfq-onnx quantize MODEL --avg-weight-bits 4` in a fresh process with an empty cache
(normalize -> synthesize -> score -> allocate -> emit), wall seconds and per-pass seconds.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    SHARED_DATA,
    load_cifar,
    machine_info,
    markdown_table,
    ort_quantize_static,
    require_shared,
    top1,
)

from dfq_onnx import quantize  # noqa: E402

log = logging.getLogger("benchmarks.allocation")


def end_to_end(model: Path, workdir: Path, extra: list[str]) -> dict:
    out, rep = workdir / "e2e.onnx", workdir / "e2e.json"
    cmd = [sys.executable, "-m", "dfq_onnx.cli", "-q", "quantize", str(model), "-o", str(out),
           "--avg-weight-bits", "4", "--cache-dir", str(workdir / "e2e-cache"), "--report", str(rep),
           *extra]
    start = time.perf_counter()
    subprocess.run(cmd, check=True)
    wall = time.perf_counter() - start
    passes = json.loads(rep.read_text())["passes"]
    return {"wall": wall, "passes": {p["pass"]: p["seconds"] for p in passes}}


def run_model(name: str, args, x, y, rows: list, e2e_rows: list, workdir: Path) -> None:
    model = SHARED_DATA / f"{name}_cifar10.onnx"
    x_cal, _ = load_cifar("calib")
    fp32 = top1(model, x, y)
    rows.append([name, "FP32", "-", "-", "-", fp32, "", "", ""])
    for wb in (8, 4):
        path = ort_quantize_static(model, workdir / f"ort_w{wb}.onnx", {"input": x_cal}, weight_bits=wb)
        acc = top1(path, x, y)
        rows.append([name, f"ORT quantize_static W{wb}A8 (real calib)", "-", wb, "-", acc, fp32 - acc,
                     "", ""])
    cache = workdir / f"cache-{name}"
    extra = {} if args.bias_correction is None else {"bias_correction": args.bias_correction}
    extra.update({k: True for k in ("gptq", "weight_clip", "dither_scoring") if getattr(args, k)})
    runs = [(b, a, m) for b in args.budgets for a in args.allocators for m in args.metrics
            if not (a == "uniform" and float(b).is_integer() and m != args.metrics[0])]
    for budget, allocator, metric in runs:
        out = workdir / f"{name}_{budget}_{allocator}_{metric}.onnx"
        start = time.perf_counter()
        if allocator == "uniform" and float(budget).is_integer():
            _, rep = quantize(model, output=out, weight_bits=int(budget), progress=False,
                              cache_dir=str(cache), **extra)
            avg, measured, predicted, metric = float(budget), "", "", "-"
        else:
            _, rep = quantize(model, output=out, avg_weight_bits=float(budget), allocator=allocator,
                              metric=metric, progress=False, cache_dir=str(cache), **extra)
            alloc = rep.notes["allocation"]
            avg, measured, predicted = alloc["avg_weight_bits"], alloc["measured_loss"], \
                alloc["predicted_loss"]
        acc = top1(out, x, y)
        log.info("%s budget %s %s: top-1 %.2f (%.1fs)", name, budget, allocator, acc,
                 time.perf_counter() - start)
        rows.append([name, f"dfq-onnx {allocator}", metric, budget, avg, acc, fp32 - acc, measured,
                     predicted])
    if not args.no_e2e:
        flag = {None: [], True: ["--bias-correction"], False: ["--no-bias-correction"]}[args.bias_correction]
        e2e = end_to_end(model, workdir, flag)
        e2e_rows.append([name, e2e["wall"], *(e2e["passes"].get(k, 0.0) for k in
                                              ("Synthesize", "ScoreSensitivity", "AllocateBits", "EmitQDQ"))])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="resnet20,resnet56")
    ap.add_argument("--budgets", default="3,4,5")
    ap.add_argument("--allocators", default="uniform,greedy,ilp,ilp-pairs")
    ap.add_argument("--no-e2e", action="store_true")
    ap.add_argument("--metrics", default="auto", help="sensitivity metrics of the mixed rows (comma list)")
    ap.add_argument("--bias-correction", action=argparse.BooleanOptionalAction, default=None,
                    help="force the analytic bias correction on/off (default: the pipeline's default)")
    ap.add_argument("--gptq", action="store_true", help="compile with --gptq (low-bit rounding on H)")
    ap.add_argument("--weight-clip", action="store_true", help="compile with --weight-clip")
    ap.add_argument("--dither-scoring", action="store_true", help="compile with --dither-scoring")
    args = ap.parse_args()
    args.budgets = [float(b) if "." in b else int(b) for b in args.budgets.split(",")]
    args.allocators = args.allocators.split(",")
    args.metrics = args.metrics.split(",")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    require_shared()
    x, y = load_cifar("test")
    rows, e2e_rows = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            run_model(name, args, x, y, rows, e2e_rows, Path(tmp))
    print(f"\n{machine_info()}\n")
    print("### Top-1 on CIFAR-10 test (10,000 images), activations 8-bit\n")
    print(markdown_table(["model", "method", "metric", "budget (avg weight bits)", "avg weight bits", "top-1",
                          "drop vs FP32", "measured loss (probe)", "predicted loss"], rows))
    if e2e_rows:
        print("\n### End to end, `--avg-weight-bits 4`, fresh process, empty cache (seconds)\n")
        print(markdown_table(["model", "wall", "Synthesize", "ScoreSensitivity", "AllocateBits", "EmitQDQ"],
                             e2e_rows))


if __name__ == "__main__":
    main()

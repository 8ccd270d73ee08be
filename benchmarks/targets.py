"""Target profiles (issue 6): every profile's output, ort-cpu and OpenVINO speed, latency budgets.

    python benchmarks/targets.py [--model resnet56] [--rounds 7] [--parts profiles,ortcpu,budget]

profiles  each built-in profile's W8A8 output of the model: onnx.checker, Q/DQ counts, top-1 in ONNX
          Runtime (for tensorrt / qnn-htp / generic a simulation of the backend's arithmetic).
ortcpu    ort-cpu W8A8 (analytic ranges) latency vs ORT quantize_static (+quant_pre_process) and FP32,
          batch 1 and 64, models in interleaved rounds (medians); OpenVINO acceptance is
          benchmarks/openvino_profile.py.
budget    `profile-target ort-cpu` latency table; mixed plans at --avg-weight-bits with the table
          (free) and with a binding --latency-ms budget; both measured (interleaved, batch 64)
          against the prediction, plus their top-1.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import onnx  # noqa: E402
from common import (  # noqa: E402
    SHARED_DATA,
    interleaved_latency_ms,
    load_cifar,
    machine_info,
    markdown_table,
    ort_quantize_static,
    require_shared,
    top1,
    write_input_npz,
)

from dfq_onnx import quantize  # noqa: E402
from dfq_onnx.commands.profile_target import profile_target  # noqa: E402
from dfq_onnx.core.target import builtin_targets  # noqa: E402

THREADS = 2   # set by --threads


def interleaved(paths: dict[str, Path], batch: int, rounds: int, runs: int) -> dict[str, float]:
    x = np.random.default_rng(0).standard_normal((batch, 3, 32, 32)).astype(np.float32)
    return interleaved_latency_ms(paths, {"input": x}, rounds, runs=runs, warmup=3, threads=THREADS)


def part_profiles(fp32: Path, tmp: Path, n_test: int) -> list[list]:
    x, y = load_cifar("test", n_test)
    rows = [["FP32", "-", "-", "-", f"{top1(fp32, x, y):.2f}"]]
    for name in builtin_targets():
        out = tmp / f"{name}.onnx"
        model, _ = quantize(fp32, target=name, output=out, progress=False)
        onnx.checker.check_model(onnx.load(out), full_check=True)
        ops = Counter(n.op_type for n in model.graph.node)
        zps = {onnx.TensorProto.DataType.Name(t.data_type).lower() for t in model.graph.initializer
               if t.name.endswith("_zero_point")}
        rows.append([name, "pass", f"{ops['QuantizeLinear']} / {ops['DequantizeLinear']}",
                     ", ".join(sorted(zps)), f"{top1(out, x, y):.2f}"])
    return rows


def part_ortcpu(fp32: Path, tmp: Path, rounds: int) -> list[list]:
    x_cal, _ = load_cifar("calib")
    paths = {"FP32": fp32,
             "ORT W8A8": ort_quantize_static(fp32, tmp / "ort.onnx", {"input": x_cal}, pre_process=False),
             "ORT+pre W8A8": ort_quantize_static(fp32, tmp / "ort_pre.onnx", {"input": x_cal})}
    quantize(fp32, target="ort-cpu", output=tmp / "dfq.onnx", progress=False)
    paths["dfq W8A8"] = tmp / "dfq.onnx"
    rows = []
    for batch in (1, 64):
        lat = interleaved(paths, batch, rounds, runs=100 if batch == 1 else 20)
        best = min(lat["ORT W8A8"], lat["ORT+pre W8A8"])
        rows.append([batch] + [f"{lat[k]:.3f}" for k in paths]
                    + [f"{lat['dfq W8A8'] / best:.3f}", f"{lat['dfq W8A8'] / lat['FP32']:.3f}"])
    return rows


def _plan(report) -> str:
    counts = Counter(r["weight_bits"] for r in report.layers)
    return " ".join(f"W{b}:{counts[b]}" for b in sorted(counts, reverse=True))


def part_budget(fp32: Path, tmp: Path, rounds: int, avg_bits: float, n_test: int,
                cache_dir: str | None) -> tuple[list, dict]:
    table_path = tmp / "latency.json"
    start = time.perf_counter()
    table = profile_target(fp32, "ort-cpu", batch=64, rounds=rounds, runs=10, threads=THREADS,
                           output=table_path)
    profile_s = time.perf_counter() - start
    x_cal, _ = load_cifar("calib")
    calib = write_input_npz(tmp / "calib.npz", {"input": x_cal})
    common = dict(target="ort-cpu", calib=str(calib), avg_weight_bits=avg_bits, latency_table=str(table_path),
                  progress=False, cache_dir=cache_dir)
    _, free = quantize(fp32, output=tmp / "free.onnx", **common)
    free_ms = free.notes["allocation"]["predicted_latency_ms"]
    fast = table["model_ms"]["8x8"]
    budget = round(fast + 0.5 * (free_ms - fast), 2)   # halfway between the free plan and all-int8
    _, bound = quantize(fp32, output=tmp / "bound.onnx", latency_ms=budget, **common)
    quantize(fp32, target="ort-cpu", output=tmp / "w8a8.onnx", progress=False)
    paths = {"FP32": fp32, "W8A8": tmp / "w8a8.onnx", "free": tmp / "free.onnx", "bound": tmp / "bound.onnx"}
    lat = interleaved(paths, 64, rounds, runs=10)
    x, y = load_cifar("test", n_test)
    rows = []
    for name, rep in (("free", free), ("bound", bound)):
        alloc = rep.notes["allocation"]
        rows.append([name, "-" if name == "free" else f"{budget:.2f}", _plan(rep),
                     f"{alloc['avg_weight_bits']:.3f}", f"{alloc['predicted_latency_ms']:.2f}",
                     f"{lat[name]:.2f}", f"{top1(paths[name], x, y):.2f}"])
    info = {"profile_s": profile_s, "fp32_ms": lat["FP32"], "w8a8_ms": lat["W8A8"], "table": table,
            "budget": budget}
    return rows, info


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="resnet56")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--parts", default="profiles,ortcpu,budget")
    ap.add_argument("--avg-weight-bits", type=float, default=4.5)
    ap.add_argument("--test-images", type=int, default=10000)
    ap.add_argument("--cache-dir", default=None, help="sensitivity cache (default: the user cache)")
    ap.add_argument("--threads", type=int, default=2, help="ORT intra-op threads for every timing")
    args = ap.parse_args()
    global THREADS
    THREADS = args.threads
    require_shared()
    fp32 = SHARED_DATA / f"{args.model}_cifar10.onnx"
    parts = args.parts.split(",")
    print(machine_info())
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir) / "work"
        tmp.mkdir()
        if "profiles" in parts:
            print(f"\n### Every profile's W8A8 output ({args.model}, analytic ranges)\n")
            print(markdown_table(["target", "onnx.checker", "Q / DQ nodes", "zero-point types",
                                  f"ORT top-1 % ({args.test_images} images)"],
                                 part_profiles(fp32, tmp, args.test_images)))
        if "ortcpu" in parts:
            print(f"\n### ort-cpu latency, median ms ({args.model}, {THREADS} thread(s), "
                  f"{args.rounds} interleaved rounds)\n")
            print(markdown_table(["batch", "FP32", "ORT W8A8", "ORT+pre W8A8", "dfq W8A8", "dfq / best ORT",
                                  "dfq / FP32"], part_ortcpu(fp32, tmp, args.rounds)))
        if "budget" in parts:
            rows, info = part_budget(fp32, tmp, args.rounds, args.avg_weight_bits, args.test_images,
                                     args.cache_dir)
            t = info["table"]
            print(f"\n### Latency budget ({args.model}, ort-cpu, batch 64, {THREADS} thread(s), "
                  f"--avg-weight-bits {args.avg_weight_bits})\n")
            print(f"profile-target: {len(t['groups'])} groups x {len(t['model_ms'])} storage classes in "
                  f"{info['profile_s']:.0f} s; whole model measured / predicted by the table (ms):")
            print(json.dumps({k: [round(t["model_ms"][k], 2), round(t["predicted_model_ms"][k], 2)]
                              for k in t["model_ms"]}))
            print(f"FP32 {info['fp32_ms']:.2f} ms, uniform W8A8 {info['w8a8_ms']:.2f} ms (same rounds)\n")
            print(markdown_table(["plan", "--latency-ms", "weight bits (layers)", "avg bits", "predicted ms",
                                  "measured ms", "top-1 %"], rows))


if __name__ == "__main__":
    main()

"""Foundation acceptance (issue 2): uniform W8A8 on the shared ResNets vs ORT quantize_static, same run.

    python benchmarks/foundation.py [--models resnet20,resnet56] [--rounds 5]

Top-1 on the full CIFAR-10 test set (10,000 images) for FP32, ORT quantize_static (QDQ, per-channel,
MinMax, uint8 activations; with and without ORT's recommended `quant_pre_process`) and dfq-onnx with
ranges from the real calibration set, from BN statistics (analytic, no data) and from Gaussian noise.
Latency: median ms per run of ORT CPU (2 threads) at batch 1 and 64, models measured in interleaved
rounds so machine noise hits all of them alike. Also: integer kernels in ORT's optimized graph,
onnx.checker(full_check), and byte-identical re-runs.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import onnx  # noqa: E402
from common import (  # noqa: E402
    SHARED_DATA,
    gaussian_calib,
    interleaved_latency_ms,
    load_cifar,
    machine_info,
    markdown_table,
    optimized_op_counts,
    ort_quantize_static,
    require_shared,
    top1,
    write_input_npz,
)

from dfq_onnx import quantize  # noqa: E402

KERNELS = ("QLinearConv", "QLinearAdd", "QGemm", "QLinearGlobalAveragePool")


def latencies(models: dict[str, Path], batch: int, rounds: int) -> dict[str, float]:
    x = np.random.default_rng(0).standard_normal((batch, 3, 32, 32)).astype(np.float32)
    return interleaved_latency_ms(models, {"input": x}, rounds, runs=20 if batch > 1 else 100, warmup=5)


def bench(name: str, tmp: Path, rounds: int) -> tuple[list, list, list]:
    fp32 = SHARED_DATA / f"{name}_cifar10.onnx"
    x_test, y_test = load_cifar("test")
    x_cal, _ = load_cifar("calib")
    calib_npz = write_input_npz(tmp / "calib.npz", {"input": x_cal})
    noise = {"input": gaussian_calib(len(x_cal), seed=0)}
    paths = {"FP32": fp32,
             "ORT W8A8 real": ort_quantize_static(fp32, tmp / "ort_real.onnx", {"input": x_cal},
                                                  pre_process=False),
             "ORT+pre W8A8 real": ort_quantize_static(fp32, tmp / "ort_pre.onnx", {"input": x_cal}),
             "ORT+pre W8A8 noise": ort_quantize_static(fp32, tmp / "ort_noise.onnx", noise)}
    for label, calib in (("dfq W8A8 real", str(calib_npz)), ("dfq W8A8 analytic", "analytic"),
                         ("dfq W8A8 noise", "noise")):
        out = tmp / (label.replace(" ", "_") + ".onnx")
        quantize(fp32, output=out, calib=calib, progress=False)
        paths[label] = out
    acc = {k: top1(p, x_test, y_test) for k, p in paths.items()}
    fp = acc["FP32"]
    acc_rows = [[name, k, f"{v:.2f}", f"{v - fp:+.2f}"] for k, v in acc.items()]
    timed = {k: paths[k] for k in ("FP32", "ORT W8A8 real", "ORT+pre W8A8 real", "dfq W8A8 analytic")}
    lat_rows = []
    for batch in (1, 64):
        lat = latencies(timed, batch, rounds)
        best_ort = min(lat["ORT W8A8 real"], lat["ORT+pre W8A8 real"])
        lat_rows.append([name, batch] + [f"{lat[k]:.3f}" for k in timed]
                        + [f"{lat['dfq W8A8 analytic'] / best_ort:.3f}",
                           f"{lat['dfq W8A8 analytic'] / lat['FP32']:.3f}"])
    ops = optimized_op_counts(paths["dfq W8A8 analytic"])
    again = tmp / "again.onnx"
    quantize(fp32, output=again, calib="analytic", progress=False)
    identical = again.read_bytes() == paths["dfq W8A8 analytic"].read_bytes()
    onnx.checker.check_model(onnx.load(paths["dfq W8A8 analytic"]), full_check=True)
    checks = [[name, ", ".join(f"{k} {ops.get(k, 0)}" for k in KERNELS),
               ", ".join(f"{k} {v}" for k, v in sorted(ops.items()) if k not in KERNELS),
               "pass", "yes" if identical else "NO"]]
    return acc_rows, lat_rows, checks


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="resnet20,resnet56")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    require_shared()
    acc, lat, chk = [], [], []
    for name in args.models.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            a, lt, c = bench(name, Path(tmp), args.rounds)
        acc += a
        lat += lt
        chk += c
    print(machine_info())
    print("\n### Top-1 on CIFAR-10 test (10,000 images)\n")
    print(markdown_table(["model", "method", "top-1 %", "vs FP32"], acc))
    print("\n### ORT CPU latency, median ms (2 threads, interleaved rounds)\n")
    print(markdown_table(["model", "batch", "FP32", "ORT W8A8", "ORT+pre W8A8", "dfq W8A8",
                          "dfq / best ORT", "dfq / FP32"], lat))
    print("\n### dfq-onnx W8A8 (analytic) output checks\n")
    print(markdown_table(["model", "integer kernels (ORT optimized graph)", "other ops", "onnx.checker full",
                          "byte-identical re-run"], chk))


if __name__ == "__main__":
    main()

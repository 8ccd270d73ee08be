"""OpenVINO profile (issue 6): the QDQ output loads in OpenVINO, runs int8 on CPU, beats FP32, matches ORT.

    pip install openvino
    python benchmarks/openvino_profile.py [--model resnet56] [--rounds 5]

ResNet-56 W8A8 from `--target openvino` (data-free, analytic ranges): top-1 on CIFAR-10 test in
OpenVINO and in ONNX Runtime, OpenVINO CPU latency at batch 64 (median of interleaved rounds, 2 threads)
vs the FP32 model, and the runtime precisions OpenVINO chose for its execution nodes.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import openvino as ov

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHARED_DATA, load_cifar, machine_info, markdown_table, require_shared, top1  # noqa: E402

from dfq_onnx import quantize  # noqa: E402
from dfq_onnx.backends.latency import interleaved_medians  # noqa: E402


def compile_ov(path: Path, batch: int):
    model = ov.Core().read_model(str(path))
    model.reshape([batch, 3, 32, 32])
    return ov.Core().compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": "2"})


def ov_top1(compiled, x, y, batch) -> float:
    n = len(x) // batch * batch
    preds = np.concatenate([compiled(x[i:i + batch])[0].argmax(1) for i in range(0, n, batch)])
    return float(np.mean(preds == y[:n]) * 100.0), n


def precisions(compiled) -> Counter:
    counts = Counter()
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        if "runtimePrecision" in info and "layerType" in info:
            counts[f"{info['layerType'].astype(str)}:{info['runtimePrecision'].astype(str)}"] += 1
    return counts


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="resnet56")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    require_shared()
    fp32 = SHARED_DATA / f"{args.model}_cifar10.onnx"
    x, y = load_cifar("test")
    with tempfile.TemporaryDirectory() as tmp:
        q = Path(tmp) / "q.onnx"
        quantize(fp32, target="openvino", output=q, progress=False)
        models = {"FP32": compile_ov(fp32, 64), "dfq W8A8 (openvino profile)": compile_ov(q, 64)}
        acc = {k: ov_top1(c, x, y, 64) for k, c in models.items()}
        n = acc["FP32"][1]
        ort_acc = top1(q, x[:n], y[:n])
        batch = x[:64]
        lat = interleaved_medians({k: functools.partial(c, batch) for k, c in models.items()}, args.rounds,
                                  runs=20, warmup=3)
        prec = precisions(models["dfq W8A8 (openvino profile)"])
    print(machine_info(), f"openvino {ov.__version__}")
    rows = [[k, f"{acc[k][0]:.2f}", f"{statistics.median(lat[k]):.2f}"] for k in models]
    print(f"\n{args.model}, OpenVINO CPU, batch 64, top-1 on {acc['FP32'][1]} test images\n")
    print(markdown_table(["model", "OpenVINO top-1 %", "OpenVINO ms (batch 64)"], rows))
    speed = statistics.median(lat["FP32"]) / statistics.median(lat["dfq W8A8 (openvino profile)"])
    print(f"\nspeed-up vs FP32: {speed:.2f}x; ONNX Runtime top-1 of the same QDQ file, same images: "
          f"{ort_acc:.2f}")
    int8 = {k: v for k, v in prec.items() if k.endswith(":u8") or k.endswith(":i8")}
    listing = ", ".join(f"{k} x{v}" for k, v in sorted(int8.items()))
    print(f"OpenVINO execution nodes running u8/i8: {listing}")


if __name__ == "__main__":
    main()

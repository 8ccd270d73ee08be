"""`dfq-onnx demo`: quantize the bundled digits CNN data-free and compare it with FP32."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np

from dfq_onnx.api import quantize
from dfq_onnx.backends import runtime
from dfq_onnx.backends.latency import median_ms


def _latency_ms(sess, feeds: dict[str, np.ndarray], runs: int = 50) -> float:
    return float(median_ms(lambda: sess.run(None, feeds), runs, warmup=5))


def _accuracy(sess, feeds, labels) -> float:
    logits = runtime.run_batched(sess, feeds, 256)[0]
    return float(np.mean(np.argmax(logits, axis=1) == labels) * 100.0)


def run_demo(out_dir: Path, weight_bits: int | None = None, act_bits: int | None = None,
             progress: bool = True) -> str:
    """Quantize, evaluate both models on the held-out digits, and return a printable table."""
    from dfq_onnx.models.demo import DEMO_MODEL, load_demo_eval

    out_dir.mkdir(parents=True, exist_ok=True)
    fp32_path, q_path = out_dir / "digits_fp32.onnx", out_dir / "digits_quantized.onnx"
    shutil.copyfile(DEMO_MODEL, fp32_path)
    start = time.perf_counter()
    _, report = quantize(DEMO_MODEL, output=q_path, report_path=out_dir / "report.json",
                         weight_bits=weight_bits, act_bits=act_bits, progress=progress)
    seconds = time.perf_counter() - start
    feeds, labels = load_demo_eval()
    rows = []
    for label, path in (("FP32", fp32_path), ("dfq-onnx (data-free)", q_path)):
        sess = runtime.session(path.read_bytes(), threads=1)
        batch = {k: v[:64] for k, v in feeds.items()}
        rows.append((label, _accuracy(sess, feeds, labels), path.stat().st_size / 1024.0,
                     _latency_ms(sess, batch)))
    w = report.layers[0]["weight_bits"] if report.layers else "-"
    a = report.layers[0]["act_bits"] if report.layers else "-"
    lines = [f"digits CNN ({len(labels)} held-out images), W{w}A{a}, quantized in {seconds:.1f} s "
             f"with no data ({report.forward_passes} forward passes)",
             f"{'model':22s} {'top-1 %':>8s} {'size KiB':>9s} {'ORT ms (batch 64)':>18s}"]
    lines += [f"{r[0]:22s} {r[1]:8.2f} {r[2]:9.1f} {r[3]:18.3f}" for r in rows]
    lines.append(f"models and report.json in {out_dir}/")
    return "\n".join(lines)

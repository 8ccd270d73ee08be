"""Does the integer model pay? A whole-model timing of FP32 against the default integer plan.

On ORT CPU an integer model is not always faster than its float source: a small network of depthwise
convolutions and elementwise ops (PP-OCR's direction classifier) runs its QLinearConv depthwise kernels
2-5x slower than the float NCHWc ones and its QLinearMul slower than Mul, so the quantized model loses to
FP32 (BENCHMARKS.md, issue 17). Which ops pay depends on the kernels and shapes (the same depthwise
kernels run faster in int8 on EfficientNet-Lite0), so the check times the model itself, once:

    both models (batch 1 at the compile's input shape, the target's runtime, `THREADS` threads) timed in
    R paired rounds (each round: one untimed call, then a median of k calls of each, order alternating;
    the untimed call absorbs the other session's threads still spinning after its last run),
    r_i = int_ms_i / fp32_ms_i,                                  i = 1..R
    slower  <=>  P25(r) > 1        (the lower quartile of the paired ratios: "measured slower", not a tie)

R and k follow from the FP32 call time t so the check takes about `SECONDS`: k = clamp(20 ms / t, 1, 10),
R = clamp(SECONDS / (2 (k + 1) t), 3, 9). A pair within the timing noise keeps the integer plan. The result is
cached by model, target, input shapes, runtime version, CPU and threads (`measure` is what decides; the
caller keeps it on disk), so a compile with the cache reproduces its output byte for byte.
"""

from __future__ import annotations

import platform
import statistics
from typing import Callable

import numpy as np

from dfq_onnx.backends.latency import Timer, median_ms, random_feeds

THREADS = 2           # ORT intra-op threads of the timing (profile-target's default)
SECONDS = 3.0         # wall the timing aims at
ENGINE = 1            # bump when the rule changes: cached decisions are then ignored


def cpu_name() -> str:
    """The CPU's model name (Linux /proc/cpuinfo), else platform's processor string."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def runtime_version(runtime: str) -> str:
    if runtime == "onnxruntime":
        import onnxruntime

        return f"onnxruntime {onnxruntime.__version__}"
    import openvino

    return f"openvino {openvino.__version__}"


def schedule(fp32_ms: float, seconds: float = SECONDS) -> tuple[int, int]:
    """(rounds R, calls per round k) for an FP32 call of `fp32_ms` (module docstring)."""
    t = max(fp32_ms, 1e-3)
    k = int(min(10, max(1, round(20.0 / t))))
    rounds = int(min(9, max(3, seconds * 1e3 // (2 * (k + 1) * t))))
    return rounds, k


def paired_ratios(fp32: Callable[[], object], quant: Callable[[], object], seconds: float = SECONDS
                  ) -> dict:
    """Per-round medians of both callables and their ratios, in alternating order (module docstring)."""
    quant()                                                 # warm-up: allocations, kernel selection
    fp32()
    rounds, k = schedule(median_ms(fp32, 3, warmup=0), seconds)
    f_ms, q_ms = [], []
    for i in range(rounds):
        pair = [(fp32, f_ms), (quant, q_ms)]
        for fn, out in (pair if i % 2 == 0 else pair[::-1]):
            out.append(median_ms(fn, k, warmup=1))
    ratios = [q / f for q, f in zip(q_ms, f_ms)]
    return {"rounds": rounds, "calls": k, "fp32_ms": statistics.median(f_ms),
            "int_ms": statistics.median(q_ms), "ratios": ratios}


def slower(ratios: list[float]) -> bool:
    """Measured slower: the lower quartile of the paired ratios above 1."""
    return bool(np.percentile(ratios, 25) > 1.0)


def measure(runtime: str, fp32_model, int_model, threads: int = THREADS, seconds: float = SECONDS) -> dict:
    """Time both models (ModelProtos with concrete input shapes) and say whether the integer one is
    measured slower: {"fp32_ms", "int_ms", "ratio", "rounds", "calls", "ratios", "integer_slower"}."""
    timer = Timer(runtime, threads)
    calls = []
    for model in (fp32_model, int_model):
        fn, feeds = timer.compile(model), random_feeds(model)
        calls.append(lambda fn=fn, feeds=feeds: fn(feeds))
    out = paired_ratios(*calls, seconds=seconds)
    out["ratio"] = statistics.median(out["ratios"])
    out["integer_slower"] = slower(out["ratios"])
    return out

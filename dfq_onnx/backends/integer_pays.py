"""Does the integer model pay? A whole-model timing of FP32 against the default integer plan.

On ORT CPU an integer model is not always faster than its float source: a small network of depthwise
convolutions and elementwise ops (PP-OCR's direction classifier) runs its QLinearConv depthwise kernels
2-5x slower than the float NCHWc ones and its QLinearMul slower than Mul, so the quantized model loses to
FP32 (BENCHMARKS.md, issue 17). Which ops pay depends on the kernels and shapes (the same depthwise
kernels run faster in int8 on EfficientNet-Lite0), so the check times the model itself, once:

    both models (batch 1 at the compile's input shape, the target's runtime, `THREADS` threads) timed in
    R alternating rounds (each round: one untimed call, then k timed calls of each, order alternating;
    the untimed call absorbs the other session's threads still spinning after its last run),
    r_i = min(int calls of round i) / min(fp32 calls of round i),       i = 1..R
    slower  <=>  median(r) > 1 + MARGIN

Another process on the machine only ever adds to a call, so a round's fastest call estimates the
uncontended time, and the two models' minima are taken seconds apart; the median over rounds discards
the rare round in which a loaded machine makes one model's 2-thread call oddly fast (a tiny model's
call on one core can beat two synchronising ones). PP-OCR's direction classifier, whose integer form is
~15-20 % slower: per-round ratios of medians spread 0.3-1.5 at load 3-5 and the old rule (their lower
quartile above 1) decided differently on two compiles; this median read 1.16-1.32 over 12 timings at
load 4.5, and the ratio of the overall minima once fell to 0.99. An integer plan within MARGIN of FP32
stays integer: the user asked for a quantized model, and a difference that small is within the drift
of the ratio. A model whose ratio sits within that drift of 1 + MARGIN can still decide differently on
another run, so the measurement is cached by model, target, input shapes, runtime version, CPU and
threads (`measure` is what decides; the caller keeps it on disk): a compile with the cache reproduces
its output byte for byte, and `--no-latency-check` gives an output that depends on no timing.

R and k follow from the FP32 call time t so the check takes about `SECONDS`: k = clamp(20 ms / t, 1, 10),
R = clamp(SECONDS / (2 (k + 1) t), 3, 9).
"""

from __future__ import annotations

import platform
import statistics
from typing import Callable

from dfq_onnx.backends.latency import Timer, call_ms, median_ms, random_feeds

THREADS = 2           # ORT intra-op threads of the timing (profile-target's default)
SECONDS = 3.0         # wall the timing aims at
MARGIN = 0.05         # an integer plan at most this much slower than FP32 stays integer (docstring)
ENGINE = 2            # bump when the rule changes: cached decisions are then ignored


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


def paired_times(fp32: Callable[[], object], quant: Callable[[], object], seconds: float = SECONDS
                 ) -> dict:
    """Both callables timed in alternating rounds: per round, each one's fastest call and their ratio;
    the medians over rounds (module docstring)."""
    quant()                                                 # warm-up: allocations, kernel selection
    fp32()
    rounds, k = schedule(median_ms(fp32, 3, warmup=0), seconds)
    f_ms, q_ms = [], []
    for i in range(rounds):
        pair = [(fp32, f_ms), (quant, q_ms)]
        for fn, out in (pair if i % 2 == 0 else pair[::-1]):
            out.append(min(call_ms(fn, k, warmup=1)))
    return {"rounds": rounds, "calls": k, "fp32_ms": statistics.median(f_ms),
            "int_ms": statistics.median(q_ms), "ratios": [q / f for q, f in zip(q_ms, f_ms)]}


def slower(ratios: list[float]) -> bool:
    """Measured slower: the median of the per-round ratios more than MARGIN above 1."""
    return bool(statistics.median(ratios) > 1.0 + MARGIN)


def decided(ratios: list[float]) -> dict:
    """What the per-round ratios say: {"ratio": their median, "integer_slower"} (a fresh timing or a
    cached one)."""
    return {"ratio": statistics.median(ratios), "integer_slower": slower(ratios)}


def measure(runtime: str, fp32_model, int_model, threads: int = THREADS, seconds: float = SECONDS) -> dict:
    """Time both models (ModelProtos with concrete input shapes) and say whether the integer one is
    measured slower: {"fp32_ms", "int_ms", "ratio", "rounds", "calls", "ratios", "integer_slower"}
    (times: medians over rounds of each round's fastest call)."""
    timer = Timer(runtime, threads)
    calls = []
    for model in (fp32_model, int_model):
        fn, feeds = timer.compile(model), random_feeds(model)
        calls.append(lambda fn=fn, feeds=feeds: fn(feeds))
    out = paired_times(*calls, seconds=seconds)
    return {**out, **decided(out["ratios"])}

"""Does the integer model pay? A whole-model timing of FP32 against the default integer plan.

On ORT CPU an integer model is not always faster than its float source: a small network of depthwise
convolutions and elementwise ops (PP-OCR's direction classifier) runs its QLinearConv depthwise kernels
2-5x slower than the float NCHWc ones and its QLinearMul slower than Mul, so the quantized model loses to
FP32 (BENCHMARKS.md, issue 17). Which ops pay depends on the kernels and shapes (the same depthwise
kernels run faster in int8 on EfficientNet-Lite0), so the check times the model itself, once:

    both models (batch 1 at the compile's input shape, ONNX Runtime) timed in R alternating rounds of
    single-thread CPU time (`dfq_onnx.backends.cpu_work`: each round one untimed call, then k timed calls
    of each, order alternating),
    r_i = min(int calls of round i) / min(fp32 calls of round i),       i = 1..R
    slower  <=>  median(r) > 1 + MARGIN

(R from 7: fewer, from 3, once every round so far sits more than SETTLED away on one side of the line:
ResNet-20's 0.5 or the direction classifier's 2-5 are settled in 3 rounds; a call of 250 ms and more is
timed once a round with no untimed call, `cpu_work.LONG_MS`, so a 5 s forward costs 8 calls, not 29).

CPU time, not wall time: the work a call does, which another process on the machine barely moves.
Session 14's rule timed wall time at 2 threads (fastest call per round, median over rounds); on the
direction classifier it still read 0.93-1.50 over compiles minutes apart on a shared machine, so the
zoo's output flipped between float and integer with the load of the minute (a fresh cache at load ~10:
float; at load ~5: integer). Its CPU-time ratio reads 1.17-1.18 at either load (BENCHMARKS.md, session
15). An integer plan within MARGIN of FP32 stays integer: the user asked for a quantized model, and a
difference that small is within the drift of the ratio. A model whose ratio sits within that drift of
1 + MARGIN can still decide differently on another run, so the measurement is cached by model, target,
input shapes, runtime version, CPU and threads (`measure` is what decides; the caller keeps it on
disk): a compile with the cache reproduces its output byte for byte, and `--no-latency-check` gives an
output that depends on no timing.
"""

from __future__ import annotations

import platform
import statistics

from dfq_onnx.backends import cpu_work

THREADS = 1           # ORT intra-op threads of the timing (single-thread CPU work)
MARGIN = 0.05         # an integer plan at most this much slower than FP32 stays integer (docstring)
SETTLED = 0.25        # every round this far (relative) on one side of 1 + MARGIN: the timing may stop
ENGINE = 4            # bump when the rule changes: cached decisions are then ignored


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


def slower(ratios: list[float]) -> bool:
    """Measured slower: the median of the per-round ratios more than MARGIN above 1."""
    return bool(statistics.median(ratios) > 1.0 + MARGIN)


def settled(ratios: list[float]) -> bool:
    """Every round's ratio more than SETTLED (relative) below or above the line 1 + MARGIN: more rounds
    would not move the median across it (cpu_work stops after its EARLY rounds)."""
    line = 1.0 + MARGIN
    return all(r < line * (1 - SETTLED) for r in ratios) or all(r > line * (1 + SETTLED) for r in ratios)


def decided(ratios: list[float]) -> dict:
    """What the per-round ratios say: {"ratio": their median, "integer_slower"} (a fresh timing or a
    cached one)."""
    return {"ratio": statistics.median(ratios), "integer_slower": slower(ratios)}


def measure(runtime: str, fp32_model, int_model) -> dict:
    """Time both models (ModelProtos with concrete input shapes) on ONNX Runtime and say whether the
    integer one is measured slower: {"fp32_ms", "int_ms", "ratio", "rounds", "calls", "ratios",
    "integer_slower"} (times: medians over rounds of each round's least CPU time)."""
    if runtime != "onnxruntime":
        raise ValueError(f"runtime '{runtime}' is not timed here")
    work = cpu_work.paired_cpu(fp32_model, int_model, settled=settled)
    return {"rounds": work["rounds"], "calls": work["calls"], "fp32_ms": work["first_ms"],
            "int_ms": work["second_ms"], "ratios": work["ratios"], **decided(work["ratios"])}

"""Which of two models of the same network does less work per call: single-thread CPU time, paired.

Wall time of a whole model on a shared 2-core machine spreads too widely to tell two layouts apart when
they are close: PP-OCRv4 rec's neck static vs in its form at batch 1, 2 threads, load 6-9, per-round
ratios 0.3-4.6 and medians 0.65-1.50 over five 3-12 s timings (BENCHMARKS.md, issue 14 session 15). The
CPU time of a call at one intra-op thread with spinning off is the work the call does: a thread another
process preempts accrues none, so the load barely moves it (the same models at load 8-10: medians
1.016-1.034 over eight timings, a ViT's 1.10-1.19 over three). It leaves out how each layout scales
over threads (rec's static neck runs 0.875 of the form's wall time at batch 32 on 2 threads, the same
work); both layouts use the same kernels' threading.

    per round i (order alternating, one untimed call of each first):
        r_i = min over k calls of cpu(second) / min over k calls of cpu(first)
    ratio = median_i r_i;   k = clamp(round(20 ms / t), 3, 10), R = clamp(SECONDS / (2 (k + 1) t), 7, 15)

with t the first model's CPU time per call, so a 15 ms model takes ~2 s and a 100 ms one ~6 s.
"""

from __future__ import annotations

import statistics
import time

import onnxruntime as ort

from dfq_onnx.backends.latency import random_feeds
from dfq_onnx.backends.runtime import create
from dfq_onnx.core import ir

SECONDS = 6.0


def _session(model) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return create(ir.serialize(model), opts)


def cpu_ms(fn, runs: int) -> list[float]:
    """CPU times (ms, this process) of `runs` calls of `fn()`."""
    out = []
    for _ in range(runs):
        start = time.process_time()
        fn()
        out.append((time.process_time() - start) * 1e3)
    return out


def schedule(first_ms: float, seconds: float = SECONDS) -> tuple[int, int]:
    """(rounds R, calls per round k) for a first model of `first_ms` per call (module docstring)."""
    t = max(first_ms, 1e-3)
    k = int(min(10, max(3, round(20.0 / t))))
    return int(min(15, max(7, seconds * 1e3 // (2 * (k + 1) * t)))), k


def paired_cpu(first_model, second_model, seconds: float = SECONDS) -> dict:
    """Both models (ModelProtos with concrete input shapes, the same inputs) timed in alternating rounds:
    {"first_ms", "second_ms" (medians over rounds of each round's least CPU time), "ratios" (second /
    first per round), "rounds", "calls"}."""
    calls = []
    for model in (first_model, second_model):
        sess, feeds = _session(model), random_feeds(model)
        calls.append(lambda sess=sess, feeds=feeds: sess.run(None, feeds))
    for fn in calls:                                   # warm-up: allocations, kernel selection
        fn()
    rounds, k = schedule(statistics.median(cpu_ms(calls[0], 3)), seconds)
    mins: list[list[float]] = [[], []]
    for i in range(rounds):
        for j in ((0, 1) if i % 2 == 0 else (1, 0)):
            calls[j]()
            mins[j].append(min(cpu_ms(calls[j], k)))
    return {"first_ms": statistics.median(mins[0]), "second_ms": statistics.median(mins[1]),
            "ratios": [b / a for a, b in zip(*mins)], "rounds": rounds, "calls": k}

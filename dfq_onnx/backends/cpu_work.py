"""Which of two models of the same network does less work per call: single-thread CPU time, paired.

The wall time of a whole model at 2 threads on a shared machine moves with the other processes' load:
PP-OCR's direction classifier, integer vs FP32 at batch 1, read medians of per-round ratios 0.93-1.50
over timings minutes apart (BENCHMARKS.md, issue 14 sessions 14-15), and a compile's KeepFloat decision
flipped with the load of the minute. The CPU time of a call at one intra-op thread with spinning off is
the work the call does: a thread another process preempts accrues none, so the load barely moves it
(the classifier: 1.17-1.18 in two timings at load 1, PP-OCRv4 rec's two layouts 1.016-1.034 over eight
at load 8-10). It leaves out how each model scales over threads (both use the runtime's threading of
the same ops).

    per round i (order alternating, u untimed calls of each first):
        r_i = min over k calls of cpu(second) / min over k calls of cpu(first)
    ratio = median_i r_i;   k = clamp(round(20 ms / t), 3, 10), u = 1,
    R = clamp(SECONDS / (2 (u + k) t), 7, 15)

with t the first model's CPU time per call, so a 15 ms model takes ~2 s and a 100 ms one ~6 s; a caller
that knows when the rounds so far settle its question (`settled`: every ratio far on one side of its line)
stops after EARLY rounds. A long call, t >= LONG_MS = SECONDS / (2 EARLY (1 + 3)) = 250 ms (where even
EARLY rounds of that schedule overrun SECONDS), is timed by the seconds instead of the calls: u = 0,
k = 1 (the untimed call and the least of k calls absorb a short call's cache and timer jitter; a call of
a quarter second and more is its own average), and t is its first call's CPU time (no 3 calls to
estimate it). The floor is then 2 + 2 x EARLY calls instead of 5 + 8 x EARLY: a 5 s segmenter at
1024 x 1024 (ISNet) pays 8 of its calls, not 29, and the rounds cost SECONDS x t / LONG_MS at most
(7 rounds: 14 t), never 56 t.
"""

from __future__ import annotations

import statistics
import time

import onnxruntime as ort

from dfq_onnx.backends.latency import call_ms, random_feeds
from dfq_onnx.backends.runtime import create
from dfq_onnx.core import ir

SECONDS = 6.0
EARLY = 3             # rounds before a `settled` caller may stop
LONG_MS = SECONDS * 1e3 / (2 * EARLY * (1 + 3))   # a call this long is timed once a round (docstring)


def _session(model) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return create(ir.serialize(model), opts)


def cpu_ms(fn, runs: int) -> list[float]:
    """CPU times (ms, this process) of `runs` calls of `fn()`."""
    return call_ms(fn, runs, warmup=0, clock=time.process_time)


def schedule(first_ms: float, seconds: float = SECONDS) -> tuple[int, int]:
    """(rounds R, timed calls per round k) for a first model of `first_ms` per call (module docstring)."""
    t = max(first_ms, 1e-3)
    k = 1 if t >= LONG_MS else int(min(10, max(3, round(20.0 / t))))
    return int(min(15, max(7, seconds * 1e3 // (2 * (untimed(t) + k) * t)))), k


def untimed(first_ms: float) -> int:
    """Untimed calls of each model before a round's timed ones: none for a long call (docstring)."""
    return 0 if first_ms >= LONG_MS else 1


def paired_cpu(first_model, second_model, seconds: float = SECONDS, settled=None) -> dict:
    """Both models (ModelProtos with concrete input shapes, the same inputs) in single-thread sessions,
    timed by `paired_calls`."""
    calls = []
    for model in (first_model, second_model):
        sess, feeds = _session(model), random_feeds(model)
        calls.append(lambda sess=sess, feeds=feeds: sess.run(None, feeds))
    return paired_calls(*calls, seconds=seconds, settled=settled)


def paired_calls(first, second, seconds: float = SECONDS, settled=None) -> dict:
    """Two callables timed in alternating rounds (module docstring): {"first_ms", "second_ms" (medians
    over rounds of each round's least CPU time), "ratios" (second / first per round), "rounds", "calls"};
    `settled(ratios) -> bool` ends the timing early once it holds after EARLY rounds."""
    calls = [first, second]
    warm = [cpu_ms(fn, 1)[0] for fn in calls]          # warm-up: allocations, kernel selection
    t = warm[0] if warm[0] >= LONG_MS else statistics.median(cpu_ms(calls[0], 3))
    rounds, k = schedule(t, seconds)
    mins: list[list[float]] = [[], []]
    for i in range(rounds):
        for j in ((0, 1) if i % 2 == 0 else (1, 0)):
            for _ in range(untimed(t)):
                calls[j]()
            mins[j].append(min(cpu_ms(calls[j], k)))
        if settled is not None and i + 1 >= EARLY and settled([b / a for a, b in zip(*mins)]):
            rounds = i + 1
            break
    return {"first_ms": statistics.median(mins[0]), "second_ms": statistics.median(mins[1]),
            "ratios": [b / a for a, b in zip(*mins)], "rounds": rounds, "calls": k}

"""benchmarks/peers.py's latency columns: ORT and OpenVINO CPU at batch 1 and 32, 2 threads, FP32 beside.

Per runtime and batch, every model is timed once per round (interleaved, so a shared machine's drift hits
them alike) and the cell is the median over `--rounds` rounds of its median ms per call, with its ratio
to FP32's. A model a runtime cannot load gets "fails" in that runtime's cells.
"""

from __future__ import annotations

import functools
import statistics
from pathlib import Path

import numpy as np
from common import session

from dfq_onnx.backends.latency import interleaved_medians

BATCHES = (1, 32)


def _ort(path: Path, feeds: dict, threads: int = 2):
    return functools.partial(session(path, threads=threads).run, None, feeds)


def _openvino(path: Path, feeds: dict, threads: int = 2):
    import openvino as ov

    core = ov.Core()
    model = core.read_model(str(path))
    model.reshape({name: list(v.shape) for name, v in feeds.items()})
    compiled = core.compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": str(threads)})
    request = compiled.create_infer_request()
    return functools.partial(request.infer, feeds)


RUNTIMES = {"ORT": _ort, "OV": _openvino}


def latency_columns(paths: dict[str, Path], shape: tuple[int, ...], args) -> dict:
    """{"heads": column names, row name: cells}; FP32 must be one of `paths`."""
    out: dict = {"heads": []}
    for runtime, make in RUNTIMES.items():
        for batch in BATCHES:
            feeds = {"input": np.random.default_rng(0).standard_normal((batch, *shape), dtype=np.float32)}
            calls, failed = {}, set()
            for k, p in paths.items():
                try:
                    calls[k] = make(Path(p), feeds)
                    calls[k]()
                except Exception:  # a runtime that cannot load / run a model: a "fails" cell, not a crash
                    calls.pop(k, None)
                    failed.add(k)
            runs, warmup = (20, 3) if batch == 1 else (3, 1)
            samples = interleaved_medians(calls, args.rounds, runs, warmup)
            med = {k: statistics.median(v) for k, v in samples.items()}
            out["heads"].append(f"{runtime} b{batch} ms (x FP32)")
            base = med.get("FP32")
            for k in paths:
                ratio = f" ({med[k] / base:.2f})" if base and k in med else ""
                out.setdefault(k, []).append("fails" if k in failed else f"{med[k]:.2f}{ratio}")
            shown = ", ".join(f"{k} {v:.2f}" for k, v in med.items())
            print(f"  latency {runtime} b{batch}: {shown}", flush=True)
    return out

"""ONNX Runtime session helpers: sessions from in-memory models, batched runs, tensor statistics.

A session is made from a ModelProto, its bytes, or an `ir.session_model` (`core.shared_weights`: the
graph's large constants handed to ONNX Runtime as in-memory initializers instead of copied into the
proto and its serialization); `create` is the one place that turns any of them into a session."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx_graphsurgeon as gs
import onnxruntime as ort

from dfq_onnx.backends.chunks import pad_rows
from dfq_onnx.core import ir
from dfq_onnx.core.errors import UnsupportedModelError
from dfq_onnx.core.shared_weights import SessionModel


def session(model, threads: int = 0, optimized_path: str | None = None,
            mem_pattern: bool = True, optimize: bool = True, quiet: bool = False,
            spin: bool = True) -> ort.InferenceSession:
    """A CPU session from a ModelProto (or bytes); ORT warnings silenced. `mem_pattern=False` when the
    batch size varies between runs: ORT plans one block per input shape and its arena keeps them all.
    `optimize=False`: no graph optimizations (a session only to resolve the graph's types); `quiet`: ORT
    logs nothing, not even errors (a try whose failure the caller handles); `spin=False`: idle intra-op
    threads sleep -- for sessions timed in turn, where the threads of the one that ran last would spin on
    the cores of the next (ResNet-20 b32 time ratios 0.46-2.14 round to round on 2 cores; BENCHMARKS.md,
    session 21)."""
    opts = ort.SessionOptions()
    if not spin:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if not optimize:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 4 if quiet else 3
    opts.enable_mem_pattern = mem_pattern
    if threads:
        opts.intra_op_num_threads = threads
    if optimized_path:
        opts.optimized_model_filepath = optimized_path
    try:
        return create(model, opts)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0]
        raise UnsupportedModelError(f"ONNX Runtime cannot load the model: {first}") from None


def create(model, opts: ort.SessionOptions) -> ort.InferenceSession:
    """A CPU session from a ModelProto, bytes or SessionModel (whose arrays are handed to the session as
    in-memory initializers, kept alive with it; ONNX Runtime 1.32 still copies them:
    core/shared_weights.py)."""
    if isinstance(model, SessionModel):
        values = [ort.OrtValue.ortvalue_from_numpy(a) for a in model.arrays.values()]
        if values:
            opts.add_external_initializers(list(model.arrays), values)
        sess = ort.InferenceSession(model.proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        sess._dfq_shared = (values, model.arrays)
        return sess
    if not isinstance(model, bytes) and ir.over_two_gb(model):
        return _large_session(model, opts)
    data = model if isinstance(model, bytes) else ir.serialize(model)
    return ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])


def _large_session(model, opts: ort.SessionOptions) -> ort.InferenceSession:
    """Protobuf cannot serialize a model above 2 GB: stage it with external data in a temporary
    directory and let ORT load it from there (ORT holds the weights once loaded)."""
    with tempfile.TemporaryDirectory(prefix="dfq-ort-") as tmp:
        path = ir.save_model(model, Path(tmp) / "model.onnx")
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def copy_observing(graph: gs.Graph, tensors: list[str]) -> tuple[gs.Graph, dict]:
    """A copy of `graph` and its tensor table; an error names the first of `tensors` it lacks."""
    g = ir.copy_graph(graph)
    table = g.tensors()
    missing = [t for t in tensors if t not in table]
    if missing:
        raise UnsupportedModelError(f"tensor '{missing[0]}' not found in the graph")
    return g, table


def observer_model(graph: gs.Graph, tensors: list[str]):
    """A copy of `graph` whose outputs are the named tensors (for statistics collection)."""
    g, table = copy_observing(graph, tensors)
    outs = []
    for name in tensors:
        t = table[name]
        if t.dtype is None:
            t.dtype = np.float32
        outs.append(t)
    g.outputs = outs
    return ir.session_model(g)


def iter_batches(feeds: dict[str, np.ndarray], batch: int):
    n = len(next(iter(feeds.values())))
    for start in range(0, n, batch):
        yield {k: v[start:start + batch] for k, v in feeds.items()}


def run_batched(sess: ort.InferenceSession, feeds: dict[str, np.ndarray], batch: int,
                static: bool = False) -> list[np.ndarray]:
    """Run all samples in calls of `batch` rows and concatenate each output along axis 0. `static`:
    the model's batch is fixed at `batch`, so a short last call is padded with copies of its last row
    (`chunks.pad_rows`) and their outputs dropped."""
    outs: list[list[np.ndarray]] = []
    for chunk in iter_batches(feeds, batch):
        real = len(next(iter(chunk.values())))
        res = sess.run(None, pad_rows(chunk, batch) if static else chunk)
        if not outs:
            outs = [[] for _ in res]
        for acc, r in zip(outs, res):
            acc.append(r[:real] if static else r)
    return [np.concatenate(a, axis=0) for a in outs]


def run_all(sess: ort.InferenceSession, feeds: dict[str, np.ndarray], fixed: int | None) -> list[np.ndarray]:
    """Every row of `feeds` in one call, or in calls of `fixed` rows when the graph's batch is fixed
    (`run_batched(static=True)`)."""
    n = len(next(iter(feeds.values())))
    return run_batched(sess, feeds, fixed or n, static=fixed is not None)
